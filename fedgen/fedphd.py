"""FedPhD's math (Long et al., "FedPhD: Federated Pruning with Hierarchical Learning of Diffusion Models", 2024):
statistical homogeneity, homogeneity-aware edge selection and homogeneity-weighted cloud aggregation.

    SH(q)   = 2 - ||q - q_target||                       (L2 by default, as the official code; L1 as a variant)
    P(e)    ~ max(A * SH(merge(q_e, n_e; client)) - n_e + b, 0) + 1e-8          (edge selection, per client)
    rho_e   = ReLU(n_e + a * SH(q_e) + b) / sum_e' ReLU(n_e' + a * SH(q_e') + b)  (cloud weights)

Distributions are label distributions (sum 1); counts are training examples. Plain functions on numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

SELECTION_FLOOR = 1e-8
"""Added to every edge's selection score (the official code's), so that P is defined when all scores are zero."""


def homogeneity(q: np.ndarray, target: np.ndarray, norm: str = "l2") -> float:
    """SH(q) = 2 - ||q - target||_p, p = 2 ('l2') or 1 ('l1')."""
    q, target = np.asarray(q, dtype=float), np.asarray(target, dtype=float)
    if q.shape != target.shape:
        raise ValueError(f"distribution of shape {q.shape} against a target of shape {target.shape}")
    return 2.0 - float(np.linalg.norm(q - target, ord={"l2": 2, "l1": 1}[norm]))


def merge(q: np.ndarray, n: float, histogram: np.ndarray) -> tuple[np.ndarray, float]:
    """The sample-weighted merge of a distribution ``q`` over ``n`` examples with a client's label histogram:
    (n q + h) / (n + sum h), and the merged count."""
    h = np.asarray(histogram, dtype=float)
    total = n + h.sum()
    if total <= 0:
        raise ValueError("cannot merge two empty distributions")
    return (n * np.asarray(q, dtype=float) + h) / total, total


def selection_probabilities(qs: Sequence[np.ndarray], counts: Sequence[float], histogram: np.ndarray,
                            target: np.ndarray, a: float, b: float = 0.0, norm: str = "l2") -> np.ndarray:
    """P(e) for one client over the edges, from each edge's current distribution ``qs[e]`` and count
    ``counts[e]``: proportional to max(a * SH(merge(q_e, n_e; client)) - n_e + b, 0) + 1e-8."""
    scores = np.array([max(a * homogeneity(merge(q, n, histogram)[0], target, norm) - n + b, 0.0) + SELECTION_FLOOR
                       for q, n in zip(qs, counts, strict=True)])
    return scores / scores.sum()


def cloud_weights(counts: Sequence[float], qs: Sequence[np.ndarray], target: np.ndarray, a: float,
                  b: float = 0.0, norm: str = "l2") -> np.ndarray:
    """rho_e = ReLU(n_e + a * SH(q_e) + b), normalised over the edges."""
    raw = np.array([max(n + a * homogeneity(q, target, norm) + b, 0.0) for n, q in zip(counts, qs, strict=True)])
    if raw.sum() <= 0:
        raise ValueError("every edge's cloud weight is zero: raise fedphd_balance_a or fedphd_balance_b")
    return raw / raw.sum()


def sparse_penalty(lam: float):
    """The official code's "sparse training" term: lam * sum over weight tensors W of ||W||_2 (W flattened per
    output channel, then the 2-norm of the whole), pushing whole tensors, and so channels, towards zero."""

    def penalty(model: nn.Module) -> torch.Tensor:
        return lam * sum(torch.linalg.vector_norm(p) for name, p in model.named_parameters()
                         if "weight" in name and p.requires_grad)

    return penalty
