"""SCAFFOLD: stochastic controlled averaging (Karimireddy et al., ICML 2020), option II.

Client i, round t, from the global model x with the server control c and its own control c_i (zero at first), takes
K local steps on its loss with the gradient corrected by (c - c_i):
    y <- y - lr (g_i(y) + c - c_i)
then updates its control from the distance travelled (option II) and sends both differences:
    c_i+ = c_i - c + (x - y) / (K lr),     dy_i = y - x,     dc_i = c_i+ - c_i
Server, with S the clients that replied and N the clients in the federation:
    x <- x + eta_g / |S| * sum_{i in S} dy_i,     c <- c + 1 / N * sum_{i in S} dc_i

K lr is the distance one unit of constant gradient moves the weights over the round (:attr:`TrainResult.lr_sum`):
K lr for plain SGD, more with momentum, the sum of the steps' rates under a schedule.
"""

from __future__ import annotations

import torch
from torch import nn

from fedgen.wire import SCAFFOLD_CONTROL

Tensors = dict[str, torch.Tensor]


def join(state: Tensors, control: Tensors) -> Tensors:
    """One state dict of a model and control variates (theirs under 'scaffold-control.' keys), as they travel."""
    return {**state, **{SCAFFOLD_CONTROL + k: c for k, c in control.items()}}


def split(arrays: Tensors) -> tuple[Tensors, Tensors]:
    """(model state, control variates) of what :func:`join` made."""
    control = {k[len(SCAFFOLD_CONTROL):]: v for k, v in arrays.items() if k.startswith(SCAFFOLD_CONTROL)}
    return {k: v for k, v in arrays.items() if not k.startswith(SCAFFOLD_CONTROL)}, control


def correction(server_control: list[torch.Tensor], client_control: list[torch.Tensor]):
    """The penalty <c - c_i, y> whose gradient is the correction (c - c_i) SCAFFOLD adds to every local gradient."""
    diff = [c - ci for c, ci in zip(server_control, client_control, strict=True)]

    def penalty(model: nn.Module) -> torch.Tensor:
        return torch.stack([(d * p).sum() for d, p in zip(diff, model.parameters(), strict=True)]).sum()

    return penalty


def client_control_update(
    client_control: list[torch.Tensor], server_control: list[torch.Tensor], global_params: list[torch.Tensor],
    local_params: list[torch.Tensor], lr_sum: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Option II: (c_i+, dc_i) with c_i+ = c_i - c + (x - y) / (K lr)."""
    if lr_sum <= 0:
        raise ValueError(f"SCAFFOLD needs at least one local step with a positive learning rate (K lr = {lr_sum})")
    new = [ci - c + (x - y) / lr_sum
           for ci, c, x, y in zip(client_control, server_control, global_params, local_params, strict=True)]
    return new, [n - ci for n, ci in zip(new, client_control, strict=True)]


def server_update(
    global_state: Tensors, client_states: list[Tensors], control_deltas: list[Tensors], control: Tensors,
    eta_g: float, num_clients: int,
) -> tuple[Tensors, Tensors]:
    """One server step: (new global state, new server control). Keys without a control (e.g. BatchNorm statistics)
    are plainly averaged."""
    if not client_states:
        raise ValueError("SCAFFOLD needs at least one client update")
    new_global = {}
    for k, x in global_state.items():
        mean = torch.stack([s[k].double() for s in client_states]).mean(0)
        new_global[k] = (x.double() + eta_g * (mean - x.double()) if k in control else mean).to(x.dtype)
    new_control = {k: c + torch.stack([d[k] for d in control_deltas]).sum(0) / num_clients
                   for k, c in control.items()}
    return new_global, new_control
