"""The shared base of the reference runs, Local-only (lower bound) and Centralized (upper bound).

Neither is federated learning: they read the clients' partitions directly, which only a simulation can do, and send
no messages (zero bytes). They train with the same loop and hyper-parameters as the finetune role, one
``train.local_epochs`` pass per round, so their curves sit on the same axis as the federated ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from fedgen.config import TrainConfig
from fedgen.data import Federation
from fedgen.train import train


class ServerSideTraining(Strategy):
    def __init__(self, federation: Federation, model_fn: Callable[[], nn.Module], train_cfg: TrainConfig, device, seed):
        self.fed = federation
        self.model_fn = model_fn
        self.train_cfg = train_cfg
        self.device = device
        self.seed = seed
        self._arrays: ArrayRecord | None = None

    @classmethod
    def build(cls, ctx) -> ServerSideTraining:
        return cls(ctx.fed, ctx.model_fn, ctx.cfg.train, ctx.device, ctx.cfg.seed)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self._arrays = arrays
        return []

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        pass

    def _train(self, state: dict, data, seed: int) -> tuple[dict, float]:
        model = self.model_fn()
        model.load_state_dict(state)
        result = train(model, data, self.train_cfg, self.device, seed=seed)
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}, result.loss
