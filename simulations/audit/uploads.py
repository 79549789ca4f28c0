"""Membership inference against the pseudo-features the clients uploaded (strategy.upload=features): minus the
distance to the nearest upload of the same class."""

from __future__ import annotations

import math

import torch

from simulations.audit.harness import Target


def _nearest_upload(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, zy: torch.Tensor,
                    target: Target) -> torch.Tensor:
    """Minus each example's squared distance to the nearest uploaded pseudo-feature of its class."""
    uploads = target.normalized(z)
    score = torch.full((len(y),), -math.inf)
    for c in torch.unique(y):
        mine, theirs = y == c, uploads[zy.long() == c]
        if len(theirs):
            score[mine] = -torch.cdist(x[mine], theirs).min(1).values ** 2
    return score
