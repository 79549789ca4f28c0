"""Weighted averaging of state dicts: the one implementation the strategies that average models themselves share
(FedDF's groups, FedPhD's edges and cloud, FedDDPM's denoisers)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def average(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float] | None = None
            ) -> dict[str, torch.Tensor]:
    """The (uniform, or ``weights``-weighted) average of state dicts, each entry in its own dtype (integer buffers
    such as BatchNorm's batch count are rounded)."""
    w = torch.tensor([1.0] * len(states) if weights is None else [float(x) for x in weights], dtype=torch.float64)
    if len(states) != len(w) or not len(states) or w.sum() <= 0:
        raise ValueError("need as many positive-sum weights as states, and at least one state")
    w = w / w.sum()
    out = {}
    for k, ref in states[0].items():
        mean = sum(wi * s[k].double() for wi, s in zip(w, states, strict=True))
        out[k] = (mean.round() if not ref.is_floating_point() else mean).to(ref.dtype)
    return out
