"""FedDyn strategy (Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021).

Algorithm (server side, each round t):
    1. sample clients; send theta^{t-1} and alpha (config 'feddyn-alpha')
    2. each client minimises L_k(theta) - <g_k, theta> + alpha/2 ||theta - theta^{t-1}||^2 and updates its g_k
    3. h^t = h^{t-1} - alpha/m * sum_k (theta_k^t - theta^{t-1});  theta^t = mean_k theta_k^t - h^t / alpha
The math is in :mod:`fedgen.feddyn`.

The client's g_k must move exactly when its update is aggregated: :class:`strategies.stateful.StatefulClients`
names the round each client continues from.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedgen import feddyn
from fedgen.config import PositiveFloat, StrategyConfig
from fedgen.wire import FEDDYN_ALPHA, FEDDYN_MEAN_EXAMPLES
from strategies.method import Method
from strategies.stateful import StatefulClients


class FedDynConfig(StrategyConfig):
    name: Literal["feddyn"] = "feddyn"
    feddyn_alpha: PositiveFloat = 0.01
    """FedDyn regulariser weight. FedDyn corrects the trainable parameters only; BatchNorm's running statistics are
    plainly averaged, so run it with model.norm=group for the algorithm as written."""
    feddyn_alpha_by_data_share: bool = False
    """As FedDyn's official code: client k uses alpha / w_k, w_k = n_k / (mean of n over the federation), so clients
    with more data are pulled less towards the global model. False: every client uses alpha (the paper's text)."""


class FedDyn(StatefulClients):
    """FedDyn on top of Flower's FedAvg sampling and reply checks.

    Parameters
    ----------
    alpha : float
        The dynamic regulariser's weight (the paper uses 0.1, 0.01, 0.001).
    num_clients : int
        m, the number of clients in the federation (the server correction divides by it).
    param_keys : set of str
        The state-dict keys that are trainable parameters; other entries (e.g. BatchNorm statistics) are averaged.
    mean_examples : float, optional
        The mean training-set size over the federation. Given, each client scales alpha by its data share,
        alpha / (n_k / mean_examples), as the official code does; the server's correction is the same either way.
    **kwargs
        Passed to :class:`strategies.stateful.StatefulClients`.
    """

    def __init__(self, alpha: float, num_clients: int, param_keys: Iterable[str], mean_examples: float | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if alpha <= 0:
            raise ValueError("FedDyn alpha must be positive")
        self.alpha = alpha
        self.num_clients = num_clients
        self.param_keys = set(param_keys)
        self.mean_examples = mean_examples
        self.h: dict[str, torch.Tensor] = {}
        self._global: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "h": self.h}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.h = state["h"]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays.to_torch_state_dict()
        if not self.h:
            self.h = {
                k: torch.zeros_like(v, dtype=torch.float64) for k, v in self._global.items() if k in self.param_keys
            }
        config = ConfigRecord({**config, FEDDYN_ALPHA: self.alpha})  # a copy: the run's record also goes to evaluation
        if self.mean_examples is not None:
            config[FEDDYN_MEAN_EXAMPLES] = self.mean_examples
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.aggregate_with(server_round, replies, self._step)

    def _step(self, clients: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        new_global, self.h = feddyn.server_update(self._global, clients, self.h, self.alpha, self.num_clients)
        return new_global


def build(ctx) -> FedDyn:
    s, fed = ctx.cfg.strategy, ctx.fed
    mean = (float(np.mean([len(fed.client(k)[0]) for k in range(fed.num_clients)]))
            if s.feddyn_alpha_by_data_share else None)
    return FedDyn(alpha=s.feddyn_alpha, num_clients=fed.num_clients,
                  param_keys=ctx.param_keys(), mean_examples=mean, **ctx.sampling())


class FedDynMethod(Method):
    section = FedDynConfig
    checkpoint = True
    build = staticmethod(build)
