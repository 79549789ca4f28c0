"""Partitioning the client pool with flwr-datasets partitioners.

The partitioners run on a light ``datasets.Dataset`` of (index, label, domain) only; images stay in memory as they
are and a client materialises its own partition on demand.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import numpy as np
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    NaturalIdPartitioner,
    PathologicalPartitioner,
)

from fedgen.config import PartitionConfig


def longtail_indices(labels: np.ndarray, imbalance_factor: float, seed: int) -> np.ndarray:
    """Subsample to a long-tailed profile: class c keeps n_max * IF^(-c/(C-1)) examples (c in label order)."""
    classes = np.unique(labels)
    n_max = min(int((labels == c).sum()) for c in classes)
    rng = np.random.default_rng(seed)
    keep = []
    for rank, c in enumerate(classes):
        n_c = max(1, int(n_max * imbalance_factor ** (-rank / max(1, len(classes) - 1))))
        keep.append(rng.choice(np.flatnonzero(labels == c), size=n_c, replace=False))
    return np.sort(np.concatenate(keep))


class LazyPartitions(Sequence):
    """Client k's pool indices, computed when first asked for and then kept: with thousands of virtual clients, a
    process pays only for the partitions it serves (flwr-datasets' IID partitioner shards per call, about 3 ms)."""

    def __init__(self, partitioner, num_clients: int) -> None:
        self._partitioner = partitioner
        self._num_clients = num_clients
        self._loaded: dict[int, np.ndarray] = {}
        self[0]  # fail now on an impossible partitioning (Dirichlet and pathological compute all at once here)

    def __len__(self) -> int:
        return self._num_clients

    def __getitem__(self, k: int) -> np.ndarray:
        if not 0 <= k < self._num_clients:
            raise IndexError(k)
        if k not in self._loaded:
            self._loaded[k] = np.asarray(self._partitioner.load_partition(k)["idx"], dtype=np.int64)
        return self._loaded[k]


def partition_indices(
    labels: np.ndarray, domains: np.ndarray, cfg: PartitionConfig, num_clients: int, seed: int
) -> Sequence[np.ndarray]:
    """Indices into the pool for each client, by the configured scheme (computed per client on first use)."""
    index = np.arange(len(labels))
    if cfg.kind == "longtail":
        index = longtail_indices(labels, cfg.imbalance_factor, seed)
    if len(index) < num_clients:
        raise ValueError(f"data.num_clients={num_clients} exceeds the {len(index)} examples in the client pool")
    table = datasets.Dataset.from_dict(
        {"idx": index, "label": labels[index].astype(np.int64), "domain": domains[index].astype(np.int64)}
    )
    if cfg.kind in ("iid", "longtail"):
        table = table.shuffle(seed=seed)
        partitioner = IidPartitioner(num_partitions=num_clients)
    elif cfg.kind == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            alpha=cfg.alpha,
            min_partition_size=min(cfg.min_partition_size, len(index) // num_clients),
            self_balancing=True,
            seed=seed,
        )
    elif cfg.kind == "classes":
        n_classes = len(np.unique(labels))
        if cfg.classes_per_client > n_classes:
            raise ValueError(
                f"data.partition.classes_per_client={cfg.classes_per_client} exceeds the {n_classes} classes"
            )
        partitioner = PathologicalPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            num_classes_per_partition=cfg.classes_per_client,
            class_assignment_mode="first-deterministic",
            seed=seed,
        )
    elif cfg.kind == "domain":
        n_domains = len(np.unique(domains))
        if n_domains != num_clients:
            raise ValueError(
                f"data.partition.kind=domain gives one client per domain: data.num_clients must be {n_domains}, "
                f"got {num_clients}"
            )
        partitioner = NaturalIdPartitioner(partition_by="domain")
    else:  # pragma: no cover - the schema closes the choice
        raise ValueError(cfg.kind)
    partitioner.dataset = table
    parts = LazyPartitions(partitioner, num_clients)
    if cfg.kind == "domain":  # partition k holds domain k
        return sorted(parts, key=lambda p: int(domains[p[0]]))
    return parts


def split_train_test(indices: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A client's own train / local-test split of its partition."""
    order = np.random.default_rng(seed).permutation(indices)
    n_test = int(round(test_fraction * len(order)))
    return np.sort(order[n_test:]), np.sort(order[:n_test])
