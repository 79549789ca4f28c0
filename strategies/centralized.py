"""Centralized: the upper bound of every comparison (see :mod:`strategies.server_side`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from flwr.app import ArrayRecord, Message, MetricRecord

from strategies.method import Method
from strategies.server_side import ServerSideConfig, ServerSideTraining


class CentralizedConfig(ServerSideConfig):
    name: Literal["centralized"] = "centralized"


class Centralized(ServerSideTraining):
    """One model trained on the union of every client's training data (the upper bound)."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        state, loss = self._train(self._arrays.to_torch_state_dict(), self.fed.pooled_train(), self.seed + server_round,
                                  server_round)
        return ArrayRecord(state), MetricRecord({"train-loss": loss})


class CentralizedMethod(Method):
    section = CentralizedConfig
    federated = False
    build = staticmethod(Centralized.build)
