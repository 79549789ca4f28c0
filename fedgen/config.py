"""The experiment schema: the one home of every configuration value.

An experiment is a YAML file validated against :class:`ExperimentConfig`. Unknown keys, wrong types and impossible
values are refused with a :class:`ConfigError` that names the offending key, before any work starts.
``--set key.sub=value`` overrides are applied to the YAML tree before validation (values parsed as YAML).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
OpenFraction = Annotated[float, Field(gt=0, lt=1)]


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PartitionConfig(_Section):
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


class DataConfig(_Section):
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


class ModelConfig(_Section):
    name: Literal["cnn", "resnet18"] = "cnn"
    norm: Literal["batch", "group"] = "batch"
    """GroupNorm is the variant DP-SGD accepts."""


class TrainConfig(_Section):
    """Local training of a classifier (clients, and the server for reference runs)."""

    local_epochs: PositiveInt = 1
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 0.01
    momentum: Fraction = 0.9
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    eval_batch_size: PositiveInt = 256


class StrategyConfig(_Section):
    name: Literal["fedavg", "fedprox", "feddyn", "local", "centralized"] = "fedavg"
    fraction_train: Annotated[float, Field(gt=0, le=1)] = 1.0
    min_train_clients: PositiveInt = 2
    fraction_evaluate: Fraction = 0.0
    """Share of clients asked to evaluate the global model on their local test split each round."""
    proximal_mu: Annotated[float, Field(ge=0)] = 0.01
    """FedProx proximal weight."""
    feddyn_alpha: PositiveFloat = 0.01
    """FedDyn regulariser weight."""
    round_timeout_s: PositiveFloat = 3600.0
    """A client that has not replied this long after a round's messages went out counts as failed for the round."""


class RayConfig(_Section):
    address: str | None = None
    """Join an existing Ray cluster (e.g. 'auto' or 'HOST:6379'); None starts a local one."""
    client_num_cpus: PositiveInt = 1
    client_num_gpus: Annotated[float, Field(ge=0)] = 0.0


class ExperimentConfig(_Section):
    name: str = "experiment"
    seed: int = 0
    rounds: PositiveInt = 10
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    strategy: StrategyConfig = StrategyConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        s, d = self.strategy, self.data
        if s.name not in ("local", "centralized"):
            needed = max(1, round(s.fraction_train * d.num_clients))
            if s.min_train_clients > d.num_clients:
                raise ValueError(
                    f"strategy.min_train_clients={s.min_train_clients} exceeds data.num_clients={d.num_clients}"
                )
            if needed < s.min_train_clients:
                raise ValueError(
                    f"strategy.fraction_train={s.fraction_train} samples {needed} of {d.num_clients} clients, "
                    f"fewer than strategy.min_train_clients={s.min_train_clients}"
                )
        return self

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> ExperimentConfig:
        return cls.model_validate(json.loads(text))


def _format(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        got = "" if e["type"] in ("extra_forbidden", "missing") else f" (got {e.get('input')!r})"
        lines.append(f"  {key}: {msg}{got}")
    return "\n".join(lines)


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings to a nested dict; values are parsed as YAML."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = tree
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{key}': '{p}' is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return tree


def validate(tree: dict[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None


def load_tree(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return tree


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment, apply ``--set`` overrides and validate."""
    tree = apply_overrides(load_tree(path), overrides or [])
    return validate(tree, source=str(path))


def dump_yaml(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


class SuiteConfig(_Section):
    """A comparison: several methods on the same base experiment, partitions and seeds."""

    name: str = "comparison"
    base: str
    """The base experiment YAML, relative to the suite file."""
    set: list[str] = []
    """Overrides applied to every method (key=value)."""
    seeds: Annotated[list[int], Field(min_length=1)] = [0]
    methods: Annotated[dict[str, list[str]], Field(min_length=1)]
    """Method label -> its overrides (key=value), e.g. {'FedProx': ['strategy.name=fedprox']}."""


def load_suite(path: str | Path) -> tuple[SuiteConfig, dict[str, dict[int, ExperimentConfig]]]:
    """Read a suite and validate every (method, seed) experiment up front, before any run starts."""
    path = Path(path)
    tree = load_tree(path)
    try:
        suite = SuiteConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format(err, str(path))) from None
    base = path.parent / suite.base
    runs: dict[str, dict[int, ExperimentConfig]] = {}
    for label, overrides in suite.methods.items():
        runs[label] = {}
        for seed in suite.seeds:
            tree = apply_overrides(load_tree(base), [*suite.set, *overrides, f"seed={seed}"])
            runs[label][seed] = validate(tree, source=f"{path} method '{label}' seed {seed}")
    return suite, runs
