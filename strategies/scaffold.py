"""SCAFFOLD strategy (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning",
ICML 2020), option II.

Algorithm (server side, each round):
    1. sample clients S; send the global model x and the server control c (under 'scaffold-control.' keys of the
       model's ArrayRecord, so the download is twice FedAvg's)
    2. each client runs K local steps with the corrected gradient g_i(y) + c - c_i, updates its own control c_i
       (kept on the client) and sends y_i and dc_i (the upload is twice FedAvg's too)
    3. x <- x + eta_g * mean_{i in S} (y_i - x);  c <- c + (1/N) sum_{i in S} dc_i
The math is in :mod:`fedgen.scaffold`; the client's side in :mod:`clients.local_update`. A client's c_i moves only
when its update is aggregated (:class:`strategies.stateful.StatefulClients`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedgen import scaffold
from fedgen.config import PositiveFloat, StrategyConfig
from strategies.method import Method
from strategies.stateful import StatefulClients


class ScaffoldConfig(StrategyConfig):
    """SCAFFOLD (Karimireddy et al., ICML 2020), option II. The control variates travel with the model, so each
    round moves twice FedAvg's bytes each way."""

    tasks = ("classify", "diffusion")
    name: Literal["scaffold"] = "scaffold"
    scaffold_eta_g: PositiveFloat = 1.0
    """Global step size: x <- x + eta_g * mean(y_i - x) (the paper's default 1 is FedAvg's averaging)."""


class Scaffold(StatefulClients):
    """SCAFFOLD on Flower's FedAvg sampling and reply checks.

    Parameters
    ----------
    eta_g : float
        The global step size.
    num_clients : int
        N, the number of clients in the federation (the control's update divides by it).
    param_keys : set of str
        The trainable parameters: they carry control variates; other entries (BatchNorm statistics) are averaged.
    **kwargs
        Passed to :class:`strategies.stateful.StatefulClients`.
    """

    def __init__(self, eta_g: float, num_clients: int, param_keys: Iterable[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.eta_g, self.num_clients, self.param_keys = eta_g, num_clients, set(param_keys)
        self.control: dict[str, torch.Tensor] = {}
        self._global: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "control": self.control}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.control = state["control"]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays.to_torch_state_dict()
        if not self.control:
            self.control = {k: torch.zeros_like(v) for k, v in self._global.items() if k in self.param_keys}
        sent = ArrayRecord(scaffold.join(self._global, self.control))
        return super().configure_train(server_round, sent, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.aggregate_with(server_round, replies, self._step)

    def _step(self, replies: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        states, deltas = zip(*map(scaffold.split, replies), strict=True)
        new_global, self.control = scaffold.server_update(self._global, list(states), list(deltas), self.control,
                                                          self.eta_g, self.num_clients)
        return new_global


def build(ctx) -> Scaffold:
    return Scaffold(eta_g=ctx.cfg.strategy.scaffold_eta_g, num_clients=ctx.fed.num_clients,
                    param_keys=ctx.param_keys(),
                    message_type=ctx.kind.train_type, **ctx.sampling())


class ScaffoldMethod(Method):
    section = ScaffoldConfig
    checkpoint = True
    build = staticmethod(build)
