"""FedDDPM with dp-promise clients (dp-promise: Wang et al., USENIX Security 2024): its config section and registration;
the strategy is :mod:`strategies.fedddpm.strategy` (imported when a run builds it: it needs opacus and diffusers)."""

from __future__ import annotations

from typing import Annotated, Literal

from flwr.app import MessageType
from pydantic import Field

from fedgen.config import ExperimentConfig, Fraction, OpenFraction, PositiveFloat, PositiveInt, StrategyConfig
from strategies.method import Method

DPDIFFUSION_TRAIN = f"{MessageType.TRAIN}.dpdiffusion"
"""FedDDPM's private training of the feature denoiser (dp-promise's two phases)."""
PSEUDO_FEATURES, PSEUDO_LABELS = "features", "labels"
"""FedDDPM with upload=features: the pseudo-features a client sampled from its private model, and their labels."""


class FedDDPMConfig(StrategyConfig):
    """Private federated feature diffusion (dp-promise clients): a shared encoder trained on the server's public split
    only; clients train the conditional feature denoiser with dp-promise (the dp section) and send it, or pseudo-
    features sampled from it; the server averages, corrects (FedDDPM), may stop early (FedDDPM+), refreshes its
    auxiliary set progressively, and trains the head G on generated (and public) features."""

    tasks = ("ldmlr",)
    name: Literal["fedddpm"] = "fedddpm"
    encoder_epochs: PositiveInt = 10
    """Passes of E + G (the train section's SGD) over the public split before round 1."""
    upload: Literal["weights", "features"] = "weights"
    """What a client sends: its denoiser's weights, or ``upload_per_class`` pseudo-features of every class sampled
    from it (post-processing: the guarantee holds), which the server fits its denoiser to."""
    upload_per_class: PositiveInt = 50
    server_epochs: PositiveInt = 50
    """upload=features: passes of the server's denoiser over the uploaded pseudo-features each round."""
    correction: Literal["none", "generated", "public"] = "generated"
    """FedDDPM's correction after each aggregation: 'generated' on an auxiliary set the model generates (after the
    first aggregation), 'public' on the public split's features, 'none': plain FedAvg of the denoisers."""
    correction_steps: Annotated[int, Field(ge=0)] = 50
    correction_lr: PositiveFloat = 1e-3
    aux_per_class: PositiveInt = 50
    """correction=generated: the auxiliary set's pseudo-features per class."""
    plus: bool = False
    """FedDDPM+: a quick test after each round (the Frechet distance of fresh samples to the public features); when a
    round improves it by less than ``plus_threshold`` (relative), the server fine-tunes once for ``plus_steps`` on
    the auxiliary set and stops the run."""
    plus_threshold: Annotated[float, Field(ge=0)] = 0.05
    plus_steps: PositiveInt = 500
    progressive: bool = False
    """Progressive generation (fedgen's addition): after each correction, if the head G reads at least
    ``progressive_min_fidelity`` of fresh samples as their class, ``progressive_fraction`` of the auxiliary set (the
    oldest first) is regenerated; with ``progressive_filter``, only samples G reads as their class enter."""
    progressive_fraction: OpenFraction = 0.25
    progressive_min_fidelity: Fraction = 0.5
    progressive_filter: bool = True
    head_per_class: PositiveInt = 200
    """Pseudo-features per class the server generates each round for G (every class alike: the server does not know
    the clients' class counts)."""
    head_public: bool = True
    """G trains on the public split's features beside the generated ones (ldmlr.head_* settings)."""

    def check(self, cfg: ExperimentConfig) -> None:
        super().check(cfg)
        if cfg.ldmlr.denoiser != "mlp":
            raise ValueError("strategy fedddpm needs ldmlr.denoiser=mlp: noise multiplicity feeds the denoiser "
                             "(batch, K, d) tensors, which opacus' per-sample gradients of the MLP's layers sum over")
        if not 0 < cfg.dp.split_step < cfg.ldmlr.num_train_timesteps:
            raise ValueError(f"dp.split_step={cfg.dp.split_step} must lie inside the "
                             f"{cfg.ldmlr.num_train_timesteps} timesteps (ldmlr.num_train_timesteps)")
        if self.correction == "generated" and self.upload == "features":
            raise ValueError("strategy.upload=features fits the server's denoiser to the uploaded pseudo-features: "
                             "set strategy.correction to none or public")
        if self.plus and self.correction == "none":
            raise ValueError("strategy.plus (FedDDPM+) fine-tunes on the auxiliary set: set strategy.correction")


class FedDDPMMethod(Method):
    section = FedDDPMConfig
    checkpoint = True
    roles = {DPDIFFUSION_TRAIN: "clients.dp_diffusion:train"}

    def reply_checks(self, strategy):
        return strategy.reply_checks()

    def build(self, ctx):
        from strategies.fedddpm.strategy import build

        return build(ctx)

    def model(self, cfg, fed, state):
        from strategies.fedddpm.strategy import model

        return model(cfg, fed, state)

    def task(self, ctx, strategy):
        from strategies.fedddpm.strategy import PrivateTask

        return PrivateTask(ctx, strategy)

    def prepare(self, ctx, strategy, grid, arrays):
        from strategies.fedddpm.strategy import prepare

        return prepare(ctx, strategy, grid, arrays)
