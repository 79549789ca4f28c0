"""The FedAvg family, for algorithms whose clients keep state between rounds (FedDyn's gradient correction,
SCAFFOLD's control variate, MOON's previous model).

A client's state must move exactly when its update is aggregated. So each client keeps its state per round and
continues from the round the server names in each training message ('state-round': the last round whose update from
that client the server aggregated, 0 for none); a rejected or late update, or a round a resumed run repeats, leaves
it as it was. The Grid must name each node's partition (:class:`simulations.grid.AccountedGrid`), so that what was
aggregated survives a resume's new node ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedgen.compat.flower import check_and_log_replies
from fedgen.wire import STATE_ROUND


class StatefulClients(FedAvg):
    """Flower's FedAvg whose training messages name each client's state round, of ``message_type``.

    Subclasses aggregate with :meth:`aggregate_with` (or call :meth:`aggregated_from` with the replies they
    aggregated), and extend :meth:`state_dict`.
    """

    def __init__(self, message_type: str = MessageType.TRAIN, **kwargs) -> None:
        super().__init__(**kwargs)
        self.message_type = message_type
        self.aggregated: dict[int, int] = {}
        """Partition id -> the last round whose update from it was aggregated."""
        self._grid: Grid | None = None

    def state_dict(self) -> dict:
        return {"aggregated": self.aggregated}

    def load_state_dict(self, state: dict) -> None:
        self.aggregated = state["aggregated"]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._grid = grid
        messages = []
        for m in super().configure_train(server_round, arrays, config, grid):
            node = m.metadata.dst_node_id
            own = ConfigRecord({**m.content["config"], STATE_ROUND: self.aggregated.get(grid.partition(node), 0)})
            messages.append(Message(RecordDict({**m.content, "config": own}), dst_node_id=node,
                                    message_type=self.message_type))
        return messages

    def aggregated_from(self, server_round: int, replies: Iterable[Message]) -> None:
        for m in replies:
            self.aggregated[self._grid.partition(m.metadata.src_node_id)] = server_round

    def aggregate_with(
        self, server_round: int, replies: Iterable[Message],
        step: Callable[[list[dict[str, torch.Tensor]]], dict[str, torch.Tensor]],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The new global model from the valid replies' arrays by ``step``; their clients count as aggregated."""
        valid, _ = check_and_log_replies(self, replies, is_train=True)
        if not valid:
            return None, None
        contents = [m.content for m in valid]
        new_global = step([c[self.arrayrecord_key].to_torch_state_dict() for c in contents])
        self.aggregated_from(server_round, valid)
        return ArrayRecord(new_global), self.train_metrics_aggr_fn(contents, self.weighted_by_key)
