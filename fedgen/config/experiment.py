"""The experiment: every section together, validated with the section of its ``strategy.name``."""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, Literal

from pydantic import Field, SerializeAsAny, ValidationError, create_model, model_validator

from fedgen.config.base import ConfigError, PositiveInt, Section
from fedgen.config.core import DataConfig, ModelConfig, RayConfig, TrainConfig
from fedgen.config.foundation import FoundationConfig
from fedgen.config.privacy import DpConfig
from fedgen.config.strategy import SECTIONS, FedAvgConfig, StrategyConfig
from fedgen.config.tasks import DiffusionConfig, EvaluationConfig, LdmlrConfig


class ExperimentConfig(Section):
    name: str = "experiment"
    seed: int = 0
    """Everything random in the run: partition, client test splits, client training order, client sampling, server
    draws, and (unless init_seed is set) the initial model."""
    init_seed: Annotated[int, Field(ge=0)] | None = None
    """Draw the initial model from this seed instead of ``seed`` (to separate the two sources of variance); None:
    from ``seed``, as one stream with the rest."""
    rounds: PositiveInt = 10
    task: Literal["classify", "diffusion", "ldmlr"] = "classify"
    """What the clients train: a classifier (model, train), a class-conditional image DDPM (diffusion, evaluation),
    or a classifier with a feature-space diffusion model for long-tailed data (model, train, ldmlr)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = False
    """Deterministic algorithms only (torch.use_deterministic_algorithms, a fixed cuBLAS workspace, cuDNN without
    benchmarking), on the server and every client, so that a GPU run repeats and resumes exactly; an operation with no
    deterministic implementation then raises, naming itself. On the CPU seeded runs repeat exactly either way."""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    strategy: SerializeAsAny[StrategyConfig] = FedAvgConfig()
    """Validated against the section of ``strategy.name`` (see :func:`validate`)."""
    diffusion: DiffusionConfig = DiffusionConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    ldmlr: LdmlrConfig = LdmlrConfig()
    dp: DpConfig = DpConfig()
    foundation: FoundationConfig = FoundationConfig()
    ray: RayConfig = RayConfig()

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        self.strategy.check(self)
        if self.task == "diffusion" and self.dp.private:
            self._check_private_images()
        return self

    def _check_private_images(self) -> None:
        """dp-promise on the image U-Net: a strategy whose client terms survive DP-SGD, a split inside the
        timesteps, float32 training, and no diffusion-section setting that private training would ignore."""
        dp, steps = self.dp, self.diffusion.num_train_timesteps
        if not self.strategy.private_clients:
            able = ", ".join(n for n, sec in SECTIONS.items() if sec.private_clients and "diffusion" in sec.tasks)
            raise ValueError(f"strategy '{self.strategy.name}' cannot train the image U-Net with DP-SGD (dp.epsilon or "
                             f"dp.sigma is set): its client term depends on the data, or it trains on the server. "
                             f"Private clients run with: {able}")
        if not 0 < dp.split_step <= steps:
            raise ValueError(f"dp.split_step={dp.split_step} must lie in 1..{steps} (diffusion.num_train_timesteps; "
                             f"{steps}: plain DP-SGD over every timestep, with dp.epochs1=0)")
        if dp.split_step == steps and dp.epochs1:
            raise ValueError(f"dp.split_step={steps} leaves phase I no timesteps: set dp.epochs1=0 (plain DP-SGD)")
        if dp.epochs1:
            self._check_phase1_finite()
        if self.diffusion.autocast != "none":
            raise ValueError("private training runs in float32: set diffusion.autocast=none")
        if self.diffusion.ema_decay is not None:
            raise ValueError("private training sends its last weights: unset diffusion.ema_decay")

    def _check_phase1_finite(self) -> None:
        """Phase I's charge on the trained images, for any client: where it overflows a float it is infinite, so
        phase I alone spends an infinite epsilon whatever a client holds."""
        from fedgen.diffusion import noise_scheduler
        from fedgen.privacy import accountant

        dp, side = self.dp, self.diffusion.image_size or self.data.image_side
        abar = accountant.abar_at(noise_scheduler(self.diffusion), dp.split_step)
        refusal = accountant.phase1_unbounded(3 * side**2, abar, dp)
        if refusal is not None:
            raise ValueError(f"dp.split_step={dp.split_step} on {side}x{side} RGB images: {refusal}")

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> ExperimentConfig:
        return validate(json.loads(text), source="JSON")


def format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            if e["loc"][0] == "strategy":
                owners = [n for n, sec in SECTIONS.items() if e["loc"][-1] in sec.model_fields]
                if owners:
                    msg += f" for this strategy (it belongs to {', '.join(owners)})"
            elif len(e["loc"]) == 1 and e["loc"][0] in SECTIONS:
                msg += f" (strategy '{e['loc'][0]}' is configured in the strategy section, with strategy.name)"
        got = "" if e["type"] in ("extra_forbidden", "missing") else f" (got {e.get('input')!r})"
        lines.append(f"  {key}: {msg}{got}")
    return "\n".join(lines)


@functools.cache
def _schema(section: type[StrategyConfig]) -> type[ExperimentConfig]:
    """The experiment schema whose strategy section is ``section``."""
    return create_model("ExperimentConfig", __base__=ExperimentConfig, strategy=(section, section()))


def validate(tree: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """An experiment from its YAML tree, its strategy section chosen by ``strategy.name``."""
    strategy = tree.get("strategy")
    name = strategy.get("name", "fedavg") if isinstance(strategy, dict) else "fedavg"
    from fedgen.discovery import discover_methods  # here: discovery imports method modules, which import this one

    discover_methods()
    if name not in SECTIONS:
        raise ConfigError(f"invalid config ({source}):\n  strategy.name: unknown strategy {name!r}; choose from "
                          + ", ".join(sorted(SECTIONS)))
    try:
        return _schema(SECTIONS[name]).model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_error(err, source)) from None
