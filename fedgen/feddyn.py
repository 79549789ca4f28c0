"""FedDyn: federated learning based on dynamic regularization (Acar et al., ICLR 2021).

Client k, round t, from the global model theta^{t-1}, minimises
    L_k(theta) - <g_k, theta> + (alpha / 2) ||theta - theta^{t-1}||^2
where g_k (its state, zero at first) is then updated to g_k - alpha (theta_k^t - theta^{t-1}).

Server, with P_t the clients that replied and m the number of clients in the federation:
    h^t     = h^{t-1} - alpha / m * sum_{k in P_t} (theta_k^t - theta^{t-1})
    theta^t = mean_{k in P_t} theta_k^t - h^t / alpha
"""

from __future__ import annotations

import torch
from torch import nn

Tensors = dict[str, torch.Tensor]


def client_penalty(global_params: list[torch.Tensor], grad_state: list[torch.Tensor], alpha: float):
    """The FedDyn terms added to the local loss: -<g_k, theta> + (alpha/2)||theta - theta_global||^2."""

    def penalty(model: nn.Module) -> torch.Tensor:
        terms = [
            -(g * p).sum() + (alpha / 2) * ((p - w) ** 2).sum()
            for p, w, g in zip(model.parameters(), global_params, grad_state, strict=True)
        ]
        return torch.stack(terms).sum()

    return penalty


def client_alpha(alpha: float, num_examples: int, mean_examples: float | None) -> float:
    """alpha / w_k with w_k = n_k / mean_j n_j (the official code's per-client weight); alpha itself without a mean."""
    return alpha if mean_examples is None else alpha * mean_examples / num_examples


def client_state_update(
    grad_state: list[torch.Tensor], local_params: list[torch.Tensor], global_params: list[torch.Tensor], alpha: float
) -> list[torch.Tensor]:
    """g_k <- g_k - alpha (theta_k - theta_global)."""
    return [g - alpha * (p - w) for g, p, w in zip(grad_state, local_params, global_params, strict=True)]


def server_update(
    global_params: Tensors, client_params: list[Tensors], h: Tensors, alpha: float, num_clients: int
) -> tuple[Tensors, Tensors]:
    """One FedDyn server step on the keys of ``h`` (the trainable parameters); other keys are plainly averaged.

    Returns (new global parameters, new h).
    """
    if not client_params:
        raise ValueError("FedDyn needs at least one client update")
    mean = {k: torch.stack([c[k].double() for c in client_params]).mean(0) for k in global_params}
    new_h, new_global = {}, {}
    for k, w in global_params.items():
        if k in h:
            drift = torch.stack([c[k].double() - w.double() for c in client_params]).sum(0)
            new_h[k] = h[k] - alpha / num_clients * drift
            new_global[k] = (mean[k] - new_h[k] / alpha).to(w.dtype)
        else:
            new_global[k] = mean[k].to(w.dtype)
    return new_global, new_h
