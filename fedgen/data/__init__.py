"""Datasets, splits and partitions of a federation.

``load_federation(cfg, seed)`` is the single entry point: it loads the dataset named in the config, keeps the
server-held public split and the global test split apart, and partitions the client pool. It is cached per process
so that virtual clients sharing a Ray worker build it once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from fedgen.config import DataConfig
from fedgen.data.digits import CLASS_NAMES as DIGIT_CLASSES
from fedgen.data.digits import DOMAIN_NAMES as DIGIT_DOMAINS
from fedgen.data.digits import load_digits_domains
from fedgen.data.images import ImageSet
from fedgen.data.loaders import load_cifar, load_huggingface, load_image_folder
from fedgen.data.partition import partition_indices, split_train_test

__all__ = ["Federation", "ImageSet", "load_federation"]


@dataclass(frozen=True)
class Federation:
    """A dataset split for federated learning.

    pool: the clients' data, of which client k owns ``partitions[k]``; test: the global test split;
    public: the server-held split that no client ever sees.
    """

    name: str
    class_names: list[str]
    domain_names: list[str]
    pool: ImageSet
    test: ImageSet
    public: ImageSet
    partitions: Sequence[np.ndarray]
    client_test_fraction: float
    seed: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_clients(self) -> int:
        return len(self.partitions)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        h, w = self.pool.images.shape[1:3]
        return (3, h, w)

    def client(self, k: int) -> tuple[ImageSet, ImageSet]:
        """Client k's own (train, local test) data."""
        if not 0 <= k < self.num_clients:
            raise IndexError(f"partition-id {k} is outside 0..{self.num_clients - 1}")
        train, test = split_train_test(self.partitions[k], self.client_test_fraction, self.seed + k)
        return self.pool.subset(train), self.pool.subset(test)

    def pooled_train(self) -> ImageSet:
        """The union of every client's training data (the Centralized reference)."""
        return ImageSet.concat([self.client(k)[0] for k in range(self.num_clients)])


def _load_splits(cfg: DataConfig):
    if cfg.dataset == "digits-domains":
        return load_digits_domains(cfg.public_fraction, cfg.test_fraction, cfg.split_seed), DIGIT_CLASSES, DIGIT_DOMAINS
    if cfg.dataset in ("cifar10", "cifar100"):
        splits, classes = load_cifar(cfg.dataset, cfg.path, cfg.download, cfg.public_fraction, cfg.split_seed)
        return splits, classes, ["all"]
    if cfg.dataset == "huggingface":
        splits, classes = load_huggingface(
            cfg.path, cfg.image_key, cfg.label_key, cfg.image_size, cfg.public_fraction, cfg.test_fraction,
            cfg.split_seed,
        )
        return splits, classes, ["all"]
    if cfg.dataset == "folder":
        return load_image_folder(cfg.path, cfg.image_size, cfg.public_fraction, cfg.test_fraction, cfg.split_seed)
    raise ValueError(cfg.dataset)  # pragma: no cover - the schema closes the choice


@lru_cache(maxsize=4)
def _cached(cfg_json: str, seed: int) -> Federation:
    cfg = DataConfig.model_validate_json(cfg_json)
    splits, classes, domains = _load_splits(cfg)
    pool = splits["pool"]
    parts = partition_indices(pool.labels, pool.domains, cfg.partition, cfg.num_clients, seed)
    return Federation(
        name=cfg.dataset,
        class_names=list(classes),
        domain_names=list(domains),
        pool=pool,
        test=splits["test"],
        public=splits["public"],
        partitions=parts,
        client_test_fraction=cfg.client_test_fraction,
        seed=seed,
    )


def load_federation(cfg: DataConfig, seed: int) -> Federation:
    """Load and partition the configured dataset (cached per process)."""
    return _cached(cfg.model_dump_json(), seed)
