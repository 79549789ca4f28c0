"""An additive Invertible Bloom Lookup Table (Goodrich & Mitzenmacher, 2011) over a prime field, for collecting the
union of the clients' label sets under secure aggregation.

Each key (a label name, UTF-8) goes into one cell of each of ``PARTITIONS`` = 3 disjoint hash partitions. A cell
holds (count, key chunks, check) in the field Z_p: a key adds 1 to the count, its chunks to the key chunks and
h(key) to the check. Everything is a sum mod p, so the cell-wise sum of the clients' tables is the table of the
multiset union (an XOR table would cancel a label two clients hold). A cell is pure when it holds copies of one key
only: with count c, the key is chunks / c and the check equals c * h(key). Peeling repeatedly decodes a pure cell
and subtracts its key c times from the key's cells; it recovers every key with its multiplicity (how many clients
hold it) unless the table is too small for the keys it holds.

Sizing follows TensorFlow Federated's heavy-hitters IBLT: for r = 3 partitions peeling succeeds with high
probability with 1.222 n cells for n keys; each partition gets int(1.1 * 1.222 * n / 3 + 10) cells.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from logging import getLogger

import numpy as np
from sympy import prevprime

log = getLogger("fedgen")
PARTITIONS = 3
OVERHEAD = 1.222
"""Goodrich & Mitzenmacher's cells-per-key threshold for 3 hash functions."""
SLACK, EXTRA_CELLS = 1.1, 10


class DecodeError(ValueError):
    """The summed table could not be peeled: it holds more distinct keys than it was sized for."""

    def __init__(self, recovered: dict[str, int], stuck_cells: int, capacity: int, needed: int) -> None:
        self.recovered, self.stuck_cells, self.needed = recovered, stuck_cells, needed
        super().__init__(
            f"IBLT decode failed: {len(recovered)} labels recovered, {stuck_cells} cells still hold undecodable "
            f"entries. The union has more distinct labels than the table's capacity {capacity} allows: set the "
            f"capacity to the number of distinct labels expected; {needed} (the labels recovered plus every label "
            f"entry left in the table) is an upper bound that decodes with high probability")


@dataclass(frozen=True)
class Spec:
    """The layout every client and the server share.

    capacity: the expected number of distinct keys; prime: the field; key_bytes: the longest key (UTF-8 bytes);
    chunk_bytes: bytes per key chunk (256 ** chunk_bytes <= prime); seed: salts the hash functions.
    """

    capacity: int
    prime: int
    key_bytes: int
    chunk_bytes: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.key_bytes < 1 or self.chunk_bytes < 1:
            raise ValueError(f"IBLT sizes must be positive: {self}")
        if 256 ** self.chunk_bytes > self.prime:
            raise ValueError(f"a {self.chunk_bytes}-byte chunk does not fit the field of size {self.prime}")

    @property
    def cells_per_partition(self) -> int:
        return int(SLACK * OVERHEAD * self.capacity / PARTITIONS + EXTRA_CELLS)

    @property
    def cells(self) -> int:
        return PARTITIONS * self.cells_per_partition

    @property
    def chunks(self) -> int:
        return math.ceil(self.key_bytes / self.chunk_bytes)

    @property
    def shape(self) -> tuple[int, int]:
        """(cells, 1 count + chunks + 1 check)."""
        return self.cells, self.chunks + 2

    def _hash(self, key: bytes, salt: int, modulus: int) -> int:
        digest = hashlib.blake2b(key, digest_size=8, key=f"{self.seed}:{salt}".encode()).digest()
        return int.from_bytes(digest, "big") % modulus

    def cells_of(self, key: bytes) -> list[int]:
        """The key's cell in each partition."""
        n = self.cells_per_partition
        return [j * n + self._hash(key, j, n) for j in range(PARTITIONS)]

    def check_of(self, key: bytes) -> int:
        """h(key), in 1..p-1."""
        return 1 + self._hash(key, PARTITIONS, self.prime - 1)

    def row(self, key: bytes) -> np.ndarray:
        """What one copy of the key adds to each of its cells: (1, chunks..., h(key))."""
        if len(key) > self.key_bytes:
            raise ValueError(f"label {key.decode(errors='replace')!r} is {len(key)} bytes long; the IBLT holds "
                             f"labels of at most {self.key_bytes} bytes")
        padded = key.ljust(self.chunks * self.chunk_bytes, b"\0")
        b = self.chunk_bytes
        chunks = [int.from_bytes(padded[i:i + b], "big") for i in range(0, len(padded), b)]
        return np.array([1, *chunks, self.check_of(key)], dtype=np.int64)


def spec_for(capacity: int, max_clients: int, key_bytes: int = 64, seed: int = 0) -> Spec:
    """The largest field whose sums over ``max_clients`` tables stay exact under SecAgg+'s 32-bit arithmetic
    (each value v in [0, p) travels as v + C with C = p - 1, and the sum of n of them must stay below 2**32), and the
    widest key chunk that fits it."""
    if max_clients < 2:
        raise ValueError("secure aggregation needs at least 2 clients")
    prime = prevprime(2 ** 32 // (2 * max_clients) + 1)
    chunk_bytes = (prime.bit_length() - 1) // 8
    return Spec(capacity, int(prime), key_bytes, chunk_bytes, seed)


def encode(keys: Iterable[str], spec: Spec) -> np.ndarray:
    """One client's table of its key set (each distinct key once), int64 in [0, p)."""
    table = np.zeros(spec.shape, dtype=np.int64)
    for key in sorted(set(keys)):
        raw = key.encode()
        row = spec.row(raw)
        for cell in spec.cells_of(raw):
            table[cell] = (table[cell] + row) % spec.prime
    return table


def _pure(cell: np.ndarray, spec: Spec) -> bytes | None:
    """The key a cell holds copies of only, or None."""
    p, count = spec.prime, int(cell[0])
    if count == 0:
        return None
    inverse = pow(count, -1, p)
    chunks = [int(v) * inverse % p for v in cell[1:-1]]
    if any(c >= 256 ** spec.chunk_bytes for c in chunks):
        return None
    key = b"".join(c.to_bytes(spec.chunk_bytes, "big") for c in chunks).rstrip(b"\0")
    if int(cell[-1]) != count * spec.check_of(key) % p:
        return None
    return key


def decode(table: np.ndarray, spec: Spec) -> dict[str, int]:
    """Peel a (summed) table: every key with its multiplicity. Raises :class:`DecodeError` when peeling stops
    before the table is empty, naming the capacity that would hold the keys."""
    if table.shape != spec.shape:
        raise ValueError(f"IBLT of shape {table.shape}, expected {spec.shape}")
    work, p = table.astype(np.int64) % spec.prime, spec.prime
    found: dict[str, int] = {}
    progress = True
    while progress:
        progress = False
        for i in np.flatnonzero(work[:, 0]):
            key = _pure(work[i], spec)
            if key is None or i not in spec.cells_of(key):
                continue
            count = int(work[i, 0])
            try:
                name = key.decode()
            except UnicodeDecodeError:
                continue
            found[name] = found.get(name, 0) + count
            row = spec.row(key) * count % p
            for cell in spec.cells_of(key):
                work[cell] = (work[cell] - row) % p
            progress = True
    if work.any():
        stuck = int(np.count_nonzero(work.any(axis=1)))
        left = int(work[:spec.cells_per_partition, 0].sum())  # every key has one cell per partition
        raise DecodeError(found, stuck, spec.capacity, len(found) + max(left, math.ceil(stuck / PARTITIONS)))
    return found


def decode_with_retries(summed: Callable[[Spec], np.ndarray], spec: Spec,
                        tries: int = 3) -> tuple[dict[str, int], Spec]:
    """Peel ``summed(spec)``, and on failure the sum of tables made with fresh hash seeds (``tries`` in all).

    A table big enough for its keys can still fail: two keys that share their cell in every partition never peel
    (about n**2 / (2 m**3) such pairs for n keys and m cells per partition: 3% at the default capacity of 100 when
    the union is that large). New hashes separate them; a table too small fails every time, and the last error names
    the size to use. Returns the keys and the spec that decoded them."""
    for seed in range(spec.seed, spec.seed + tries - 1):
        current = replace(spec, seed=seed)
        try:
            return decode(summed(current), current), current
        except DecodeError as err:
            log.warning("IBLT decode failed with hash seed %d (%s); summing tables with fresh hashes", seed, err)
    last = replace(spec, seed=spec.seed + tries - 1)
    return decode(summed(last), last), last
