"""The experiment schema: one home for every configuration value.

An experiment is a YAML file validated against :class:`ExperimentConfig`. Unknown keys, wrong types and impossible
values are refused with a :class:`ConfigError` that names the offending key, before any work starts.

By concern: :mod:`~fedgen.config.base` (the section base and number types), :mod:`~fedgen.config.core` (data,
model, local training, Ray), :mod:`~fedgen.config.strategy` (what every method shares; each method's own section
lives in its module under ``strategies/``), :mod:`~fedgen.config.tasks` (diffusion, evaluation, LDMLR),
:mod:`~fedgen.config.privacy` (dp), :mod:`~fedgen.config.foundation`, :mod:`~fedgen.config.experiment` (the whole,
and validation), :mod:`~fedgen.config.io` (YAML and overrides), :mod:`~fedgen.config.suite` (comparisons).
"""

from fedgen.config.base import ConfigError, Fraction, OpenFraction, PositiveFloat, PositiveInt, Section
from fedgen.config.core import DataConfig, ModelConfig, ModelName, PartitionConfig, RayConfig, TrainConfig
from fedgen.config.experiment import ExperimentConfig, validate
from fedgen.config.foundation import (
    CaptionerConfig,
    EmbeddedConfig,
    FoundationConfig,
    GeneratorConfig,
    check_embedded,
)
from fedgen.config.io import apply_overrides, dump_yaml, load_config, load_tree
from fedgen.config.privacy import DpConfig
from fedgen.config.strategy import SECTIONS, FedAvgConfig, StrategyConfig
from fedgen.config.suite import MethodSpec, SuiteConfig, load_suite
from fedgen.config.tasks import DiffusionConfig, EvaluationConfig, LdmlrConfig

__all__ = [
    "SECTIONS", "CaptionerConfig", "ConfigError", "DataConfig", "DiffusionConfig", "DpConfig", "EmbeddedConfig",
    "EvaluationConfig", "ExperimentConfig", "FedAvgConfig", "FoundationConfig", "Fraction", "GeneratorConfig",
    "LdmlrConfig", "MethodSpec", "ModelConfig", "ModelName", "OpenFraction", "PartitionConfig", "PositiveFloat",
    "PositiveInt", "RayConfig", "Section", "StrategyConfig", "SuiteConfig", "TrainConfig", "apply_overrides",
    "check_embedded", "dump_yaml", "load_config", "load_suite", "load_tree", "validate",
]
