"""A Grid that hands each message straight to the ClientApp in this process: the fast path for strategy tests.

Flower has no public in-process runner; its Message constructor reads the sending task's identity from flwr's
private ``TaskIdentity``, which this helper sets through :func:`fedgen.compat.flower.act_as_server`.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from fedgen.compat.flower import act_as_server, copy_over_the_wire, set_message_id

RUN_ID = 1
SERVER_NODE_ID = 0
CLIENT_ERROR_CODE = 1


class InProcessGrid(Grid):
    """``num_nodes`` virtual SuperNodes with random node ids, partition k on the k-th node, state kept per node."""

    def __init__(self, client_app: ClientApp, num_nodes: int, seed: int = 0) -> None:
        act_as_server(RUN_ID, SERVER_NODE_ID)
        self.app = client_app
        rng = random.Random(seed)
        ids = [rng.getrandbits(64) | 1 for _ in range(num_nodes)]  # random uint64 ids, as Flower's
        self.contexts = {
            nid: Context(
                run_id=RUN_ID,
                node_id=nid,
                node_config={"partition-id": k, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config={},
            )
            for k, nid in enumerate(ids)
        }
        self._replies: dict[str, Message] = {}
        self.delivered: list[Message] = []
        """Every message the server sent."""
        self.received: list[Message] = []
        """Every reply the server received (before the server's own validation)."""

    def set_run(self, run) -> None:  # pragma: no cover - nothing to set
        pass

    @property
    def run(self):  # pragma: no cover - not used by the strategies
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content=content, message_type=message_type, dst_node_id=dst_node_id, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message], timeout: float | None = None) -> Iterable[str]:
        """Run each message through the ClientApp; a reply that took longer than ``timeout`` is lost."""
        ids = []
        for msg in messages:
            start = time.monotonic()
            set_message_id(msg, uuid.uuid4().hex)  # the SuperLink would set it
            self.delivered.append(msg)
            try:  # the client gets its own copy, as over the wire (a server may send one content to many nodes)
                reply = self.app(copy_over_the_wire(msg), self.contexts[msg.metadata.dst_node_id])
            except Exception as err:  # noqa: BLE001 - a failing client becomes an error reply, as in Flower
                reply = Message(Error(code=CLIENT_ERROR_CODE, reason=f"{type(err).__name__}: {err}"), reply_to=msg)
            if timeout is None or time.monotonic() - start <= timeout:
                self._replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = [self._replies.pop(i) for i in message_ids if i in self._replies]
        self.received.extend(replies)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages, timeout))
