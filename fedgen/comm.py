"""Byte accounting of every message, per round, per client, per direction and per tier.

Sizes are those of the records a message carries (``count_bytes()`` of each ArrayRecord, MetricRecord and
ConfigRecord: the array payloads, the keys and the scalar values), i.e. what the application sends, without the
transport's framing. A tier names the link: 'client-server' for what crosses the Grid; hierarchical strategies add
their own (e.g. 'edge-cloud').
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass

from flwr.app import ConfigRecord, RecordDict

UP, DOWN = "up", "down"
CLIENT_SERVER = "client-server"
CLIENT_EDGE, EDGE_CLOUD = "client-edge", "edge-cloud"
"""A hierarchy's tiers (FedPhD): clients talk to edge servers, edge servers to the cloud."""
LONG_HAUL = (CLIENT_SERVER, EDGE_CLOUD)
"""The links that reach the central server: what a hierarchy saves against a flat federation."""


def _value_bytes(value) -> int:
    if isinstance(value, list):
        return sum(_value_bytes(v) for v in value)
    if isinstance(value, bool):
        return 1
    return len(value) if isinstance(value, str | bytes) else 8


def record_bytes(content: RecordDict) -> int:
    """Bytes carried by a message's records (arrays, metrics, configs), keys included. A ConfigRecord is counted by
    Flower's own rule (8 bytes a number, 1 a bool, the length of a string or bytes), here, because Flower's
    ``count_bytes`` fails on an empty string or list (SecAgg+ sends both)."""
    return sum(len(key) + (sum(len(k) + _value_bytes(v) for k, v in record.items())
                           if isinstance(record, ConfigRecord) else record.count_bytes())
               for key, record in content.items())


@dataclass(frozen=True)
class Entry:
    round: int
    client: int
    direction: str
    tier: str
    kind: str
    bytes: int


class ByteLedger:
    """Thread-safe log of bytes moved; ``client`` is the partition id where known (-1 for the server side)."""

    def __init__(self) -> None:
        self._entries: list[Entry] = []
        self._lock = threading.Lock()

    def add(self, round: int, client: int, direction: str, nbytes: int, kind: str = "", tier: str = CLIENT_SERVER):
        if direction not in (UP, DOWN):
            raise ValueError(f"direction must be '{UP}' or '{DOWN}', got {direction!r}")
        if nbytes < 0:
            raise ValueError("bytes cannot be negative")
        with self._lock:
            self._entries.append(Entry(round, client, direction, tier, kind, int(nbytes)))

    def restore(self, entries: list[dict]) -> None:
        """Replace every entry by those saved as dicts (``dataclasses.asdict`` of :class:`Entry`), e.g. from a
        checkpoint."""
        with self._lock:
            self._entries = [Entry(**e) for e in entries]

    @property
    def entries(self) -> list[Entry]:
        with self._lock:
            return list(self._entries)

    def total(self, direction: str, round: int | None = None, tier: str | None = None) -> int:
        return sum(
            e.bytes
            for e in self.entries
            if e.direction == direction and (round is None or e.round == round) and (tier is None or e.tier == tier)
        )

    def per_client(self, direction: str, first_round: int = 0) -> dict[int, int]:
        """Bytes per client in one direction, over the rounds from ``first_round`` on."""
        out: dict[int, int] = defaultdict(int)
        for e in self.entries:
            if e.direction == direction and e.round >= first_round:
                out[e.client] += e.bytes
        return dict(out)
