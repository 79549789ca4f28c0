"""Centralized: the upper bound of every comparison (see :mod:`strategies.server_side`)."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord

from strategies.server_side import ServerSideTraining


class Centralized(ServerSideTraining):
    """One model trained on the union of every client's training data (the upper bound)."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        state, loss = self._train(self._arrays.to_torch_state_dict(), self.fed.pooled_train(), self.seed + server_round,
                                  server_round)
        return ArrayRecord(state), MetricRecord({"train-loss": loss})
