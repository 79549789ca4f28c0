"""The shared base of the reference runs, Local-only (lower bound) and Centralized (upper bound).

Neither is federated learning: they read the clients' partitions directly, which only a simulation can do, and send
no messages (zero bytes). They train with their task's local training (the client roles' loop and hyper-parameters:
``train`` for a classifier, ``diffusion`` for the image DDPM; ``local_epochs`` passes per round), so their curves sit
on the same axis as the federated ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from fedgen.config import ExperimentConfig, StrategyConfig
from fedgen.data import Federation


class ServerSideConfig(StrategyConfig):
    """The reference runs train on the server from the partitions: no client is sampled, the shared keys are unused."""

    tasks = ("classify", "diffusion", "ldmlr")

    def check(self, cfg: ExperimentConfig) -> None:
        if cfg.task not in self.tasks:
            raise ValueError(f"strategy '{self.name}' does not run task={cfg.task}")


class ServerSideTraining(Strategy):
    def __init__(self, federation: Federation, model_fn: Callable[[], nn.Module], trainer: Callable, seed: int):
        self.fed = federation
        self.model_fn = model_fn
        self.trainer = trainer
        self.seed = seed
        self._arrays: ArrayRecord | None = None

    @classmethod
    def build(cls, ctx) -> ServerSideTraining:
        return cls(ctx.fed, ctx.model_fn, ctx.kind.trainer(ctx.cfg, ctx.device), ctx.cfg.seed)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self._arrays = arrays
        return []

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        pass

    def _train(self, state: dict, data, seed: int, server_round: int) -> tuple[dict, float]:
        model = self.model_fn()
        model.load_state_dict(state)
        result = self.trainer(model, data, seed, server_round)
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}, result.loss
