"""A strategy whose training messages carry another message type: Flower's FedAvg family sends 'train'; a task whose
client role answers, e.g., 'train.diffusion' runs the same strategy, unchanged, through this wrapper."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


def for_task(strategy: Strategy, train_type: str) -> Strategy:
    """``strategy`` itself when its training messages already carry ``train_type``, else wrapped."""
    return strategy if train_type == MessageType.TRAIN else TrainsAs(strategy, train_type)


class TrainsAs(Strategy):
    def __init__(self, inner: Strategy, message_type: str) -> None:
        self.inner, self.message_type = inner, message_type

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return [Message(m.content, dst_node_id=m.metadata.dst_node_id, message_type=self.message_type)
                for m in self.inner.configure_train(server_round, arrays, config, grid)]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)
