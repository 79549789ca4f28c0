"""The sections every run has: its data and partition, the classifier and its local training, and Ray."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from fedgen.config.base import Fraction, OpenFraction, PositiveFloat, PositiveInt, Section


class PartitionConfig(Section):
    """How the client pool is split among clients (flwr-datasets partitioners)."""

    kind: Literal["iid", "dirichlet", "classes", "domain", "longtail"] = "iid"
    alpha: PositiveFloat = 0.5
    """Dirichlet concentration (kind=dirichlet); smaller is more skewed."""
    classes_per_client: PositiveInt = 2
    """Classes each client holds (kind=classes)."""
    imbalance_factor: Annotated[float, Field(ge=1)] = 10.0
    """Largest over smallest class size of the long-tailed pool (kind=longtail), which is then split IID."""
    min_partition_size: Annotated[int, Field(ge=0)] = 10
    """Dirichlet resamples until every client holds at least this many examples."""


class DataConfig(Section):
    dataset: Literal["digits-domains", "cifar10", "cifar100", "huggingface", "folder"] = "digits-domains"
    path: str | None = None
    """cifar*: the torchvision root; huggingface: a hub id or a local directory; folder: root/domain/class/image."""
    download: bool = False
    """cifar*: let torchvision download into ``path`` when missing."""
    image_key: str = "img"
    label_key: str = "label"
    image_size: PositiveInt = 32
    num_clients: PositiveInt = 6
    partition: PartitionConfig = PartitionConfig()
    client_test_fraction: Fraction = 0.2
    """Share of each client's partition kept as its local test split."""
    public_fraction: OpenFraction = 0.15
    """Share of the training data set aside as the server-held public split; no client ever sees it."""
    test_fraction: OpenFraction = 0.15
    """Share held out as the global test split, for datasets that ship none."""
    split_seed: int = 0
    """Seed of the benchmark's fixed splits (public / global test / client pool), independent of the run seed."""

    @model_validator(mode="after")
    def _paths(self) -> DataConfig:
        if self.dataset in ("huggingface", "folder") and not self.path:
            raise ValueError(f"data.path is required for dataset '{self.dataset}'")
        if self.public_fraction + self.test_fraction >= 1:
            raise ValueError("data.public_fraction + data.test_fraction must be below 1")
        return self

    @property
    def image_side(self) -> int:
        """The side of the loaded images: ``image_size`` for the datasets resized to it, else 32 (digits-domains and
        CIFAR are 32x32)."""
        return self.image_size if self.dataset in ("huggingface", "folder") else 32


ModelName = Literal["cnn", "resnet18", "resnet8", "mobilenet"]
"""The classifiers of :data:`fedgen.models.MODELS`."""


class ModelConfig(Section):
    name: ModelName = "cnn"
    norm: Literal["batch", "group"] = "batch"
    """GroupNorm is the variant DP-SGD accepts."""


class TrainConfig(Section):
    """Local training of a classifier (clients, and the server for reference runs)."""

    local_epochs: PositiveInt = 1
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 0.01
    momentum: Fraction = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    eval_batch_size: PositiveInt = 256


class RayConfig(Section):
    address: str | None = None
    """Join an existing Ray cluster (e.g. 'auto' or 'HOST:6379'); None starts a local one."""
    client_num_cpus: PositiveInt = 1
    client_num_gpus: Annotated[float, Field(ge=0)] = 0.0
    max_restarts: Annotated[int, Field(ge=0)] = 3
    """How often Ray replaces each client process that dies (killed for memory, a crashed CUDA kernel); the clients
    it was running fail for that round only. Past this, the run stops with a message saying so."""
