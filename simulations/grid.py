"""A Grid wrapper that accounts for every message and knows which partition each node holds.

Every strategy talks to clients through the Grid, so counting here covers Flower's own strategies unchanged.
Node ids are random per run; ordering nodes (and replies) by partition id makes seeded client sampling and
aggregation order reproducible.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from logging import getLogger

from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedgen.comm import DOWN, UP, ByteLedger, record_bytes

log = getLogger("fedgen")
UNKNOWN = -1


class AccountedGrid(Grid):
    def __init__(self, inner: Grid, ledger: ByteLedger) -> None:
        self.inner = inner
        self.ledger = ledger
        self.partition_of: dict[int, int] = {}
        self.failures: list[dict] = []
        self._round_of_node: dict[int, int] = {}

    # --- plain delegation ----------------------------------------------------------------------------------------
    def set_run(self, run) -> None:
        self.inner.set_run(run)

    @property
    def run(self):
        return self.inner.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        ids = list(self.inner.get_node_ids())
        return sorted(ids, key=lambda n: (self.partition_of.get(n, 1 << 62), n))

    # --- accounting ----------------------------------------------------------------------------------------------
    def _client(self, node_id: int) -> int:
        return self.partition_of.get(node_id, UNKNOWN)

    def _sent(self, messages: list[Message]) -> None:
        for m in messages:
            cfg = m.content.config_records.get("config", ConfigRecord())
            rnd = int(cfg.get("server-round", 0))
            self._round_of_node[m.metadata.dst_node_id] = rnd
            self.ledger.add(rnd, self._client(m.metadata.dst_node_id), DOWN, record_bytes(m.content),
                            kind=m.metadata.message_type)

    def _received(self, replies: list[Message]) -> list[Message]:
        for r in replies:
            src = r.metadata.src_node_id
            rnd = self._round_of_node.get(src, 0)
            if r.has_error():
                self.failures.append(
                    {"round": rnd, "client": self._client(src), "kind": r.metadata.message_type,
                     "reason": r.error.reason}
                )
                log.warning("round %s: client %s failed: %s", rnd, self._client(src), r.error.reason)
                continue
            self.ledger.add(rnd, self._client(src), UP, record_bytes(r.content), kind=r.metadata.message_type)
        return sorted(replies, key=lambda r: (self._client(r.metadata.src_node_id), r.metadata.src_node_id))

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self._sent(messages)
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._received(list(self.inner.pull_messages(message_ids)))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if not messages:
            return []
        self._sent(messages)
        return self._received(list(self.inner.send_and_receive(messages, timeout=timeout)))

    # --- discovery -----------------------------------------------------------------------------------------------
    def discover(self, experiment_json: str, expected: int, timeout: float) -> dict[int, MetricRecord]:
        """Wait for ``expected`` nodes, ask each for its partition id and label histogram (round 0).

        Returns the query metrics by partition id.
        """
        deadline = time.monotonic() + timeout
        while len(ids := list(self.inner.get_node_ids())) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(ids)} of {expected} client nodes connected within {timeout:.0f} s")
            time.sleep(1)
        config = ConfigRecord({"experiment": experiment_json, "server-round": 0})
        messages = [
            Message(content=RecordDict({"config": config}), message_type=MessageType.QUERY, dst_node_id=n)
            for n in ids
        ]
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        found: dict[int, MetricRecord] = {}
        for reply in replies:
            if not reply.has_error():
                metrics = reply.content["metrics"]
                self.partition_of[reply.metadata.src_node_id] = int(metrics["partition-id"])
                found[int(metrics["partition-id"])] = metrics
        self._sent(messages)  # accounted once partitions are known
        self._received(replies)
        if len(found) < expected:
            raise RuntimeError(f"only {len(found)} of {expected} clients answered the partition query")
        return found
