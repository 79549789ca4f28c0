"""MOON strategy (Li, He and Song, "Model-Contrastive Federated Learning", CVPR 2021).

Algorithm (each round): the server sends the global model with mu and tau; each client trains with
    loss + mu * l_con(z, z_glob, z_prev)
where z, z_glob and z_prev are the representations of the batch by the model it trains, by the global model it was
sent and by its own previous local model (which never leaves the client); the server averages the models, weighted
by the clients' example counts (FedAvg). The math is in :mod:`fedgen.moon`; the client's side in
:mod:`clients.local_update`. A client's previous model is the one of its last aggregated update
(:class:`strategies.stateful.StatefulClients`); before it has one, the global model stands in, as in the official
code.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedgen.config import PositiveFloat, StrategyConfig
from fedgen.wire import MOON_MU, MOON_TAU
from strategies.method import Method
from strategies.stateful import StatefulClients


class MoonConfig(StrategyConfig):
    """MOON (Li et al., CVPR 2021): FedAvg with a model-contrastive term in local training."""

    tasks = ("classify", "diffusion")
    name: Literal["moon"] = "moon"
    moon_mu: PositiveFloat = 1.0
    """Weight of the contrastive term (the paper uses 5 on CIFAR-10, 1 on CIFAR-100 and Tiny-ImageNet)."""
    moon_tau: PositiveFloat = 0.5
    """Temperature of the cosine similarities."""


class Moon(StatefulClients):
    def __init__(self, mu: float, tau: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.mu, self.tau = mu, tau

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config = ConfigRecord({**config, MOON_MU: self.mu, MOON_TAU: self.tau})
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None:
            self.aggregated_from(server_round, [m for m in replies if not m.has_error()])
        return arrays, metrics


def build(ctx) -> Moon:
    s = ctx.cfg.strategy
    return Moon(mu=s.moon_mu, tau=s.moon_tau, message_type=ctx.kind.train_type, **ctx.sampling())


class MoonMethod(Method):
    section = MoonConfig
    checkpoint = True
    build = staticmethod(build)
