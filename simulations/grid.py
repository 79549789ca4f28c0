"""A Grid wrapper: byte accounting, reply validation and partition discovery, for every strategy alike.

Every strategy talks to clients through the Grid, so what is done here covers Flower's own strategies unchanged:
- every message each way is counted in the run's ByteLedger;
- every reply is checked with :func:`fedgen.validation.check_reply` (a SecAgg+ stage reply by the protocol itself,
  which holds only masked vectors and key material); an error reply, a rejected reply or a missing
  one (timeout) is logged and recorded in ``failures`` and never reaches the strategy;
- node ids are random per run; ordering nodes (and replies) by partition id makes seeded client sampling and
  aggregation order reproducible.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from logging import getLogger

from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedgen.comm import CLIENT_SERVER, DOWN, UP, ByteLedger, record_bytes
from fedgen.compat.flower import RECORD_KEY_CONFIGS
from fedgen.validation import check_reply, inconsistent_replies
from fedgen.wire import (
    EXPERIMENT,
    NUM_EXAMPLES,
    NUM_PARTITIONS,
    NUM_TEST_EXAMPLES,
    PARTITION_ID,
    QUERY_FACTS,
    SERVER_ROUND,
)

log = getLogger("fedgen")
UNKNOWN = -1
RESEND_WAIT_S, MAX_RESEND_WAIT_S = 1.0, 10.0
PROCESS_DIED = "client process died"


def _round(message: Message) -> int:
    """The round a message belongs to: its config's, or for SecAgg+'s stages the workflow's group id."""
    config = message.content.config_records.get("config", ConfigRecord())
    if SERVER_ROUND in config:
        return int(config[SERVER_ROUND])
    group = message.metadata.group_id
    return int(group) if group.isdigit() else 0


def never_ran(reason: str) -> bool:
    """An error reply for a message that Ray never ran: its actor was restarting after its process died."""
    return "ActorUnavailableError" in reason and "The actor is restarting" in reason


def describe_client_error(reason: str) -> str:
    """A client's error reply in a line: a dead client process is named as such, with Ray's exit detail."""
    if "ActorDiedError" in reason:
        detail = re.search(r"Worker exit type: (\S+) Worker exit detail: ([^.]*)", reason)
        why = f"exit type {detail[1]}: {detail[2]}" if detail else reason.split("\n", 1)[0]
        return f"{PROCESS_DIED} while running it (Ray: {why})"
    if "ActorUnavailableError" in reason:
        detail = re.search(r"temporarily unavailable: (.*?)\. The task", reason)
        return f"{PROCESS_DIED} while running it (Ray: {detail[1] if detail else reason})"
    if "ClientAppException" in reason and "Message: " in reason:  # the ClientApp raised: keep its own message
        reason = reason.rsplit("Message: ", 1)[1].removesuffix("'>").strip()
    return f"client error: {reason}"


def _sent_model(content: RecordDict) -> tuple:
    """The array keys a message carried: replies are compared with those to the same model."""
    return tuple(sorted((name, tuple(sorted(rec.keys()))) for name, rec in content.array_records.items()))


class NodesUnavailable(RuntimeError):
    """Fewer client nodes are connected than a round needs, for longer than the round's timeout."""


class AccountedGrid(Grid):
    """``min_nodes``: a round needs this many connected nodes; ``wait_s``: how long to wait for them; ``tier``: the
    link the messages cross, in the ledger."""

    def __init__(self, inner: Grid, ledger: ByteLedger, min_nodes: int = 1, wait_s: float = 3600.0,
                 tier: str = CLIENT_SERVER) -> None:
        self.inner = inner
        self.ledger, self.tier = ledger, tier
        self.min_nodes, self.wait_s = min_nodes, wait_s
        self.partition_of: dict[int, int] = {}
        self.max_examples: dict[int, dict[str, int]] = {}
        """Per partition: the examples each message kind may report (train: its training set; evaluate: its test)."""
        self.facts: dict[int, MetricRecord] = {}
        """Per partition: its answer to the partition query (the facts the strategy asked for among them)."""
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
        """The connected nodes whose partition is known, by partition id. Flower's sampling waits, without a
        deadline, until enough are connected: here the wait ends with :class:`NodesUnavailable` after ``wait_s``."""
        deadline = time.monotonic() + self.wait_s
        while True:
            ids = [n for n in self.inner.get_node_ids() if n in self.partition_of]
            if len(ids) >= self.min_nodes or not self.partition_of or time.monotonic() > deadline:
                break
            time.sleep(1)
        if self.partition_of and len(ids) < self.min_nodes:
            raise NodesUnavailable(f"only {len(ids)} client node(s) connected (partitions "
                                   f"{sorted(self.partition_of[n] for n in ids)}), fewer than the "
                                   f"{self.min_nodes} a round needs (strategy.min_train_clients), for "
                                   f"{self.wait_s:.0f} s (strategy.round_timeout_s)")
        return sorted(ids, key=lambda n: self.partition_of[n])

    def partition(self, node_id: int) -> int:
        """The partition a node holds (-1 if it never answered the partition query)."""
        return self.partition_of.get(node_id, UNKNOWN)

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
            self.ledger.add(rnd, self._client(node_id), direction, nbytes, kind=kind, tier=self.tier)

    def _fail(self, rnd: int, node_id: int, kind: str, reason: str) -> None:
        self.failures.append({"round": rnd, "client": self._client(node_id), "kind": kind, "reason": reason})
        log.warning("round %s: reply of client %s rejected: %s", rnd, self._client(node_id), reason)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Send, wait, and return the valid replies ordered by partition id.

        Several messages may go to one node, of one type or several. A message that never ran because its client
        process was being replaced (Ray restarting an actor whose process died) is sent again until it runs or
        ``timeout`` is up; a client whose process died while it ran it has lost that work and is recorded as failed.
        Replies of one type, to messages that carried the same model, whose records differ in keys from the others'
        are rejected as Flower's aggregation would refuse them (the keys most replies share stand); replies to
        different models (FedDF's architecture groups) are compared within their group.
        """
        pending = list(messages)
        if not pending:
            return []
        deadline = None if timeout is None else time.monotonic() + timeout
        sent: dict[str, Message] = {}  # message id -> the message, until answered
        rounds: dict[str, int] = {}
        valid, wait = [], RESEND_WAIT_S
        while pending:
            for m in pending:
                self._account(_round(m), m.metadata.dst_node_id, DOWN, m.content, m.metadata.message_type)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            replies = list(self.inner.send_and_receive(pending, timeout=left))
            for m in pending:  # message ids are set when a message is pushed
                sent[m.metadata.message_id] = m
                rounds[m.metadata.message_id] = _round(m)
            resend = []
            for r in replies:
                out = sent.get(r.metadata.reply_to_message_id)
                if out is None or r.metadata.src_node_id != out.metadata.dst_node_id:
                    continue  # a stale reply to an earlier message
                if r.has_error() and never_ran(r.error.reason) and (
                        deadline is None or time.monotonic() + wait < deadline):
                    resend.append(out)
                    del sent[r.metadata.reply_to_message_id]
                    continue
                del sent[r.metadata.reply_to_message_id]
                src, kind, rnd = r.metadata.src_node_id, out.metadata.message_type, rounds[out.metadata.message_id]
                if r.has_error():
                    self._fail(rnd, src, kind, describe_client_error(r.error.reason))
                    continue
                self._account(rnd, src, UP, r.content, kind)
                problems = [] if RECORD_KEY_CONFIGS in out.content.config_records else self._problems(src, out, r)
                if problems:
                    self._fail(rnd, src, kind, "invalid reply: " + "; ".join(problems))
                    continue
                valid.append((r, kind, rnd, _sent_model(out.content)))
            if resend:
                log.info("%d message(s) reached a client process that was being replaced: sending again in %.0f s",
                         len(resend), wait)
                time.sleep(wait)
                wait = min(2 * wait, MAX_RESEND_WAIT_S)
            pending = [Message(out.content, dst_node_id=out.metadata.dst_node_id,
                               message_type=out.metadata.message_type, group_id=out.metadata.group_id)
                       for out in resend]
        timed_out = deadline is None or time.monotonic() >= deadline - 0.5
        for mid, out in sent.items():
            self._fail(rounds[mid], out.metadata.dst_node_id, out.metadata.message_type,
                       f"no reply within {timeout} s" if timed_out else "no reply: the node is no longer connected")
        kept = []
        odd = inconsistent_replies([r.content for r, *_ in valid], [(kind, model) for _, kind, _, model in valid])
        for i, (r, kind, rnd, _) in enumerate(valid):
            if i in odd:
                self._fail(rnd, r.metadata.src_node_id, kind, "invalid reply: " + odd[i])
            else:
                kept.append(r)
        return sorted(kept, key=lambda r: (self._client(r.metadata.src_node_id), r.metadata.src_node_id))

    def _problems(self, src: int, out: Message, reply: Message) -> list[str]:
        """What is wrong with a reply (SecAgg+'s stage replies are the protocol's to check, not these)."""
        kind = out.metadata.message_type
        limits = self.max_examples.get(self._client(src), {})
        problems = check_reply(out.content, reply.content, kind, limits.get(kind.split(".")[0]))
        problems += self._claims(src, reply.content)
        if not problems and kind in self.checks:
            problems = self.checks[kind](out.content, reply.content)
        return problems

    def _claims(self, node_id: int, reply: RecordDict) -> list[str]:
        """A reply may name its own partition only: the node's partition is the one it gave at discovery."""
        known = self.partition_of.get(node_id)
        return [f"metric '{key}.{PARTITION_ID}'={record[PARTITION_ID]} but the node holds partition {known}"
                for key, record in reply.metric_records.items()
                if known is not None and PARTITION_ID in record and record[PARTITION_ID] != known]

    # --- discovery -----------------------------------------------------------------------------------------------
    def discover(self, experiment_json: str, expected: int, timeout: float,
                 facts: Sequence[str] = ()) -> dict[int, MetricRecord]:
        """Ask each node, as it connects, for its partition id and example counts (round 0), and the ``facts`` the
        strategy's algorithm uses (e.g. its label histogram), until ``expected`` have answered. A node that cannot
        answer (e.g. a federation sized for another client count) stops the run at once, naming the reason.

        Returns the query metrics by partition id.
        """
        deadline = time.monotonic() + timeout
        config = ConfigRecord({EXPERIMENT: experiment_json, SERVER_ROUND: 0})
        if facts:
            config[QUERY_FACTS] = list(facts)
        asked: set[int] = set()
        found: dict[int, MetricRecord] = {}
        while len(found) < expected:
            new = [n for n in self.inner.get_node_ids() if n not in asked]
            if not new:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {len(asked)} of {expected} client nodes connected within {timeout:.0f} s")
                time.sleep(1)
                continue
            asked.update(new)
            messages = [Message(RecordDict({"config": config}), message_type=MessageType.QUERY, dst_node_id=n)
                        for n in new]
            for reply in self.send_and_receive(messages, timeout=max(1.0, deadline - time.monotonic())):
                metrics, node = reply.content["metrics"], reply.metadata.src_node_id
                pid = int(metrics[PARTITION_ID])
                if pid in found:
                    other = next(n for n, p in self.partition_of.items() if p == pid)
                    raise RuntimeError(f"nodes {other} and {node} both hold partition {pid}: start each SuperNode "
                                       f"with its own --node-config \"{PARTITION_ID}=K\"")
                self.partition_of[node] = pid
                self.max_examples[pid] = {MessageType.TRAIN: int(metrics[NUM_EXAMPLES]),
                                          MessageType.EVALUATE: int(metrics[NUM_TEST_EXAMPLES])}
                found[pid] = self.facts[pid] = metrics
            failed = [f["reason"] for f in self.failures if f["round"] == 0]
            if failed:
                raise RuntimeError(f"{len(failed)} client node(s) could not answer the partition query: "
                                   + "; ".join(sorted(set(failed))) + federation_hint(failed, expected))
        self._flush(self._unattributed)
        self._unattributed = []
        return found


def federation_hint(reasons: list[str], expected: int) -> str:
    """What to change when the nodes were started for another number of partitions than the experiment's."""
    if not any(NUM_PARTITIONS in r for r in reasons):
        return ""
    return (f". Start {expected} nodes, one per partition: under `flwr run`, "
            f"--federation-config \"num-supernodes={expected}\" (or once for the local SuperLink: "
            f"flwr federation simulation-config <federation> <superlink> --num-supernodes {expected}); "
            "in a deployment, --node-config \"partition-id=K num-partitions=N\" on each SuperNode")
