"""A Grid wrapper: byte accounting, reply validation and partition discovery, for every strategy alike.

Every strategy talks to clients through the Grid, so what is done here covers Flower's own strategies unchanged:
- every message each way is counted in the run's ByteLedger;
- every reply is checked with :func:`fedgen.validation.check_reply`; an error reply, a rejected reply or a missing
  one (timeout) is logged and recorded in ``failures`` and never reaches the strategy;
- node ids are random per run; ordering nodes (and replies) by partition id makes seeded client sampling and
  aggregation order reproducible.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import getLogger

from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedgen.comm import DOWN, UP, ByteLedger, record_bytes
from fedgen.validation import check_reply

log = getLogger("fedgen")
UNKNOWN = -1


class AccountedGrid(Grid):
    def __init__(self, inner: Grid, ledger: ByteLedger) -> None:
        self.inner = inner
        self.ledger = ledger
        self.partition_of: dict[int, int] = {}
        self.max_examples: dict[int, int] = {}
        self.failures: list[dict] = []
        self.checks: dict[str, Callable[[RecordDict, RecordDict], list[str]]] = {}
        """Strategy-specific reply checks by message type, run after the shared ones."""
        self._unattributed: list[tuple] = []  # bytes moved before a node's partition was known

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

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("use send_and_receive: replies are validated against the messages they answer")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("use send_and_receive: replies are validated against the messages they answer")

    # --- accounting and validation -------------------------------------------------------------------------------
    def _client(self, node_id: int) -> int:
        return self.partition_of.get(node_id, UNKNOWN)

    def _account(self, rnd: int, node_id: int, direction: str, content: RecordDict, kind: str) -> None:
        entry = (rnd, node_id, direction, record_bytes(content), kind)
        if node_id in self.partition_of:
            self._flush([entry])
        else:
            self._unattributed.append(entry)

    def _flush(self, entries: list[tuple]) -> None:
        for rnd, node_id, direction, nbytes, kind in entries:
            self.ledger.add(rnd, self._client(node_id), direction, nbytes, kind=kind)

    def _fail(self, rnd: int, node_id: int, kind: str, reason: str) -> None:
        self.failures.append({"round": rnd, "client": self._client(node_id), "kind": kind, "reason": reason})
        log.warning("round %s: reply of client %s rejected: %s", rnd, self._client(node_id), reason)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Send, wait, and return the valid replies ordered by partition id."""
        messages = list(messages)
        if not messages:
            return []
        sent = {m.metadata.dst_node_id: m for m in messages}
        rounds = {}
        for m in messages:
            cfg = m.content.config_records.get("config", ConfigRecord())
            rounds[m.metadata.dst_node_id] = rnd = int(cfg.get("server-round", 0))
            self._account(rnd, m.metadata.dst_node_id, DOWN, m.content, m.metadata.message_type)
        valid = []
        for r in self.inner.send_and_receive(messages, timeout=timeout):
            src = r.metadata.src_node_id
            out = sent.pop(src, None)
            if out is None:
                continue  # a stale reply to an earlier message
            kind, rnd = out.metadata.message_type, rounds[src]
            if r.has_error():
                self._fail(rnd, src, kind, f"client error: {r.error.reason}")
                continue
            self._account(rnd, src, UP, r.content, kind)
            problems = check_reply(out.content, r.content, kind, self.max_examples.get(self._client(src)))
            if not problems and kind in self.checks:
                problems = self.checks[kind](out.content, r.content)
            if problems:
                self._fail(rnd, src, kind, "invalid reply: " + "; ".join(problems))
                continue
            valid.append(r)
        for node_id, out in sent.items():
            self._fail(rounds[node_id], node_id, out.metadata.message_type, f"no reply within {timeout} s")
        return sorted(valid, key=lambda r: (self._client(r.metadata.src_node_id), r.metadata.src_node_id))

    # --- discovery -----------------------------------------------------------------------------------------------
    def discover(self, experiment_json: str, expected: int, timeout: float) -> dict[int, MetricRecord]:
        """Wait for ``expected`` nodes, ask each for its partition id, size and label histogram (round 0).

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
        found: dict[int, MetricRecord] = {}
        for reply in self.send_and_receive(messages, timeout=timeout):
            metrics = reply.content["metrics"]
            pid = int(metrics["partition-id"])
            self.partition_of[reply.metadata.src_node_id] = pid
            self.max_examples[pid] = int(metrics["num-examples"])
            found[pid] = metrics
        self._flush(self._unattributed)
        self._unattributed = []
        if len(found) < expected:
            reasons = "; ".join(f["reason"] for f in self.failures if f["round"] == 0)
            raise RuntimeError(f"only {len(found)} of {expected} clients answered the partition query: {reasons}")
        return found
