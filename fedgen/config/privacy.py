"""The dp section: dp-promise's private training, on the feature denoiser or the image U-Net."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from fedgen.config.base import OpenFraction, PositiveFloat, PositiveInt, Section


class DpConfig(Section):
    """dp-promise's two-phase private training (Wang et al., USENIX Security 2024) of the feature denoiser (strategy
    fedddpm) or, with epsilon or sigma set, of the image U-Net (task diffusion, in place of the diffusion section's
    local training). Phase I, timesteps [split_step, T): the plain loss, unconditional, on Poisson batches of expected
    size batch_size1; phase II, [0, split_step): class-conditional DP-SGD through opacus. Defaults: the official
    CIFAR-10 settings at epsilon 10 (clip 1e-2, S 900, K 4, batch 32 / 4096, 3 / 50 epochs, Adam 3e-4), per round; a
    client holds hundreds of examples here, so configs set smaller phase-II batches. Plain DP-SGD over all timesteps (no
    phase I): split_step = T and epochs1 = 0."""

    epsilon: PositiveFloat | None = None
    """The budget over the whole run, at ``delta``. Without ``sigma``, sigma is calibrated so that a client training
    in every round spends exactly this; with it, a client whose next round would exceed this refuses to train.
    None with sigma None: non-private (the same phases, no clipping or noise)."""
    sigma: PositiveFloat | None = None
    """Phase II's noise multiplier (None: calibrated from epsilon)."""
    delta: OpenFraction = 1e-5
    max_grad_norm: PositiveFloat = 1e-2
    split_step: PositiveInt = 900
    """S: timesteps from S on train in phase I (no added noise, charged by the forward process's own)."""
    noise_multiplicity: PositiveInt = 4
    """K: draws of (t, noise) per example averaged before its gradient is clipped (not counted by the accountant)."""
    batch_size1: PositiveInt = 32
    batch_size2: PositiveInt = 4096
    epochs1: Annotated[int, Field(ge=0)] = 3
    epochs2: Annotated[int, Field(ge=0)] = 50
    lr1: PositiveFloat = 3e-4
    lr2: PositiveFloat = 3e-4
    physical_batch_size: PositiveInt | None = None
    """Phase II processes a logical batch in chunks of at most this many examples (opacus' BatchMemoryManager scheme:
    per-sample gradients are clipped and summed chunk by chunk, the noise added once): the same step, with the
    per-sample gradients of one chunk in memory. None: the whole batch at once."""
    feature_bound: PositiveFloat = 3.0
    """Features are standardised by the public split's per-dimension mean and std, divided by this, and clipped to
    [-1, 1] (phase I's bound assumes bounded data; images are in [-1, 1] already)."""

    @property
    def private(self) -> bool:
        return self.epsilon is not None or self.sigma is not None
