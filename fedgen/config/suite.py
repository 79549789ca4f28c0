"""A comparison (``fedgen compare SUITE``): several methods on the same data, partitions and seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, model_validator

from fedgen.config.base import ConfigError, Section
from fedgen.config.experiment import ExperimentConfig, format_error, validate
from fedgen.config.io import apply_overrides, load_tree


class MethodSpec(Section):
    base: str
    """An experiment YAML of the method's own, relative to the suite file."""
    set: list[str] = []


class SuiteConfig(Section):
    """A comparison: several methods on the same data, partitions and seeds."""

    name: str = "comparison"
    base: str
    """The base experiment YAML, relative to the suite file."""
    set: list[str] = []
    """Overrides applied to every method (key=value)."""
    seeds: Annotated[list[int], Field(min_length=1)] = [0]
    methods: Annotated[dict[str, list[str] | MethodSpec], Field(min_length=1)]
    """Method label -> its overrides of the base (key=value), e.g. {'FedProx': ['strategy.name=fedprox']}, or
    {base: its own YAML, set: [overrides]} for a method configured apart (e.g. OSCAR's foundation models)."""
    target: str | None = None
    """A method label: the report adds, for every method, the rounds and bytes it took to reach that method's final
    score (seed by seed, on the same partitions)."""

    @model_validator(mode="after")
    def _target_known(self) -> SuiteConfig:
        if self.target is not None and self.target not in self.methods:
            raise ValueError(f"target '{self.target}' is not one of the methods ({', '.join(self.methods)})")
        return self


def load_suite(
    path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[SuiteConfig, dict[str, dict[int, ExperimentConfig]]]:
    """Read a suite and validate every (method, seed) experiment up front, before any run starts. ``overrides``
    apply to every run, after the suite's and the method's own settings."""
    path = Path(path)
    tree = load_tree(path)
    try:
        suite = SuiteConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_error(err, str(path))) from None
    runs: dict[str, dict[int, ExperimentConfig]] = {}
    for label, method in suite.methods.items():
        base, own = (method.base, method.set) if isinstance(method, MethodSpec) else (suite.base, method)
        runs[label] = {}
        for seed in suite.seeds:
            tree = apply_overrides(load_tree(path.parent / base), [*suite.set, *own, *overrides, f"seed={seed}"])
            runs[label][seed] = validate(tree, source=f"{path} method '{label}' seed {seed}")
    data = {label: {s: c.data for s, c in by_seed.items()} for label, by_seed in runs.items()}
    first = next(iter(data.values()))
    for label, by_seed in data.items():
        if by_seed != first:
            raise ConfigError(f"{path}: method '{label}' uses other data settings than the others; a comparison "
                              "needs identical data and partitions")
    return suite, runs
