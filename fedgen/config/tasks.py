"""The task sections: the image DDPM (task diffusion) and how it is scored, and LDMLR's feature diffusion (task
ldmlr)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from fedgen.config.base import Fraction, OpenFraction, PositiveFloat, PositiveInt, Section


class DiffusionConfig(Section):
    """The class-conditional image DDPM (task=diffusion) and its local training; the defaults are FedPhD's."""

    unet: Literal["tiny", "digits", "paper"] = "digits"
    """U-Net size (fedgen.diffusion.UNETS): 'tiny' for tests, 'digits' for the embedded benchmark (16x16 on CPU),
    'paper' FedPhD's 35.7M U-Net (channels 128/256/256/256, attention at 16x16) for GPU users."""
    image_size: PositiveInt | None = None
    """Side of the generated images; the dataset's images are resized to it. None: the dataset's own size."""
    num_train_timesteps: PositiveInt = 1000
    beta_schedule: Literal["linear", "cosine"] = "linear"
    """'linear' from beta_start to beta_end (DDPM); 'cosine' is diffusers' squaredcos_cap_v2 (improved DDPM)."""
    beta_start: PositiveFloat = 1e-4
    beta_end: PositiveFloat = 0.02
    prediction: Literal["epsilon", "v_prediction"] = "epsilon"
    lr: PositiveFloat = 2e-4
    """Adam."""
    warmup_steps: Annotated[int, Field(ge=0)] = 100
    """Linear learning-rate warm-up, counted in local steps from round 1 as if the client trained every round (so it
    ends at the same round for every client, however often it is sampled)."""
    grad_clip: PositiveFloat = 1.0
    batch_size: PositiveInt = 128
    local_epochs: PositiveInt = 1
    ema_decay: Annotated[float, Field(gt=0, lt=1)] | None = None
    """Send the exponential moving average of the weights over the local steps (diffusers' EMAModel, with its
    warm-up) instead of the last weights. None: off."""
    autocast: Literal["none", "bf16", "fp16"] = "none"
    """Mixed precision for training and sampling (fp16 with a gradient scaler, on CUDA)."""


class EvaluationConfig(Section):
    """How a generative run is scored (task=diffusion), on the server after a round."""

    every: PositiveInt = 1
    """Score every this many rounds; round 0 (the untrained model) and the last round always."""
    samples_per_class: PositiveInt = 50
    sampling_steps: PositiveInt = 100
    """DDIM steps (FedPhD: 100)."""
    batch_size: PositiveInt = 250
    inception: str | None = None
    """A local file of the FID Inception-v3 weights (torch-fidelity's pt_inception-2015-12-05-6726825d.pth): FID and
    IS then use Inception ('fid[inception]'). None: the project's own extractor, a CNN trained on the server-held
    public split ('fid[own-<dataset>-cnn]'). The two scales are not comparable."""
    reference_epochs: PositiveInt = 15
    """Training of the own extractor (it also judges class fidelity), cached in cache_dir."""
    cache_dir: str = "~/.cache/fedgen/reference"


class LdmlrConfig(Section):
    """Feature-space diffusion for long-tailed recognition (task=ldmlr; LDMLR, Han et al., 2024): the classifier's
    backbone E gives features z, its last linear layer is the head G, a conditional denoiser eps_theta(z_t, t, y) learns
    p(z | y) and its pseudo-features of rare classes train G. Defaults are the official code's where it has one."""

    method: Literal["ce", "three_stage", "e2e"] = "three_stage"
    """'ce': plain cross-entropy (the train section's passes; the denoiser is not trained). 'three_stage' (official):
    E + G on the data, then the denoiser on frozen features, then G alone on real + generated features. 'e2e' (fedgen's
    variant): {E, G, theta} in one loop, by ``schedule``."""
    # the denoiser and its noise schedule (diffusers' DDPMScheduler / DDIMScheduler on (batch, dim) tensors)
    denoiser: Literal["mlp", "unet1d"] = "mlp"
    """'unet1d': the official 1-D conditional U-Net (the feature vector as a one-channel sequence); 'mlp': residual
    MLP blocks. Both add a class embedding to the time embedding."""
    unet_dim: PositiveInt = 64
    unet_mults: Annotated[list[PositiveInt], Field(min_length=1)] = [1, 2, 4, 8]
    """Channels per level = unet_dim * mult; the feature dimension must divide by 2^(levels - 1)."""
    mlp_width: PositiveInt = 256
    mlp_depth: PositiveInt = 3
    num_train_timesteps: PositiveInt = 1000
    beta_schedule: Literal["cosine", "linear"] = "cosine"
    """'cosine' is diffusers' squaredcos_cap_v2 (official); 'linear' from 1e-4 to 0.02."""
    prediction: Literal["sample", "epsilon"] = "sample"
    """'sample': the denoiser predicts z0, its loss weighted by SNR_t = abar_t / (1 - abar_t) (official; the same
    objective as the epsilon loss); 'epsilon': the plain DDPM loss."""
    snr_gamma: PositiveFloat | None = None
    """Min-SNR weighting: clip SNR_t at this value (None: unclipped, official)."""
    diffusion_lr: PositiveFloat = 1e-3
    """Adam, for the denoiser (the official code's SGD at 1e-4 needs far more steps than a CPU run gives)."""
    diffusion_epochs: PositiveInt = 200
    """three_stage: passes of stage 2 over the frozen features."""
    diffusion_batch_size: PositiveInt = 256
    sampling_steps: PositiveInt = 50
    """DDIM steps (eta 0) when pseudo-features are generated for stage 3 and for scoring."""
    # stage 3 (three_stage) and the generated set
    generate: Literal["proportional", "fill_tail"] = "proportional"
    """'proportional' (official): max(round(generate_ratio * n_c), generate_min) per class; 'fill_tail': up to the
    largest class, max(n_max - n_c, generate_min). A class the data lacks gets none."""
    generate_ratio: PositiveFloat = 0.2
    generate_min: Annotated[int, Field(ge=0)] = 5
    head_epochs: PositiveInt = 30
    head_lr: PositiveFloat = 1e-3
    """Adam (official 1e-3, weight decay 1e-5, batch 1024)."""
    head_weight_decay: Annotated[float, Field(ge=0)] = 1e-5
    head_batch_size: PositiveInt = 1024
    # end-to-end: L_total = L_real + lambda_sem L_sem + gamma_ge L_ge, L_sem = L_LDM + eta_p L_proto + eta_s L_shape
    schedule: Literal["A", "B", "C"] = "A"
    """'A' joint (semantic weights warmed up over ``warmup_steps``); 'B' alternating (``alternate`` diffusion steps
    with E, G frozen, then a classifier step with theta frozen); 'C' progressive (L_real alone for the first
    ``phases[0]`` of the steps, then + L_sem, from ``phases[1]`` + L_ge with its pseudo ratio growing from
    ``pseudo_ratio_start`` to ``pseudo_ratio``)."""
    lambda_sem: Annotated[float, Field(ge=0)] = 1.0
    sem_to_encoder: bool = False
    """Let L_sem's gradient reach E. Off: E learns from L_real only and the denoiser follows its features (on, here,
    the encoder collapsed its features to a point the denoiser reproduces trivially: README)."""
    gamma_ge: Annotated[float, Field(ge=0)] = 0.5
    eta_proto: Annotated[float, Field(ge=0)] = 0.1
    shape: Literal["cov", "rad", "none"] = "rad"
    """The shape term against mode collapse: 'cov' the Frobenius distance of class covariances, 'rad' the cheaper
    radius term (r_y = radius_scale * sqrt(tr Sigma_y))."""
    eta_shape: Annotated[float, Field(ge=0)] = 0.1
    radius_scale: PositiveFloat = 1.0
    prototype_momentum: OpenFraction = 0.1
    """lambda of the prototypes' EMA, mu_y <- (1 - lambda w) mu_y + lambda w * batch mean."""
    pseudo_prototype_weight: Fraction = 0.3
    """w of pseudo-features in the prototypes' EMA (real features: 1)."""
    sample_every: PositiveInt = 5
    """k: pseudo-features are sampled (and L_ge taken) every k steps."""
    e2e_sampling_steps: PositiveInt = 5
    """DDIM steps of the on-the-fly sampling (differentiable: L_ge reaches theta)."""
    pseudo_ratio: Annotated[float, Field(gt=0, le=1)] = 0.3
    """Pseudo-features per real example of the batch when L_ge is taken."""
    pseudo_ratio_start: Annotated[float, Field(gt=0, le=1)] = 0.1
    warmup_steps: Annotated[int, Field(ge=0)] = 100
    alternate: Annotated[int, Field(ge=1, le=2)] = 1
    """Schedule B: diffusion steps per classifier step (1:1 or 2:1)."""
    phases: tuple[OpenFraction, OpenFraction] = (0.3, 0.6)
    """Schedule C: the shares of the steps at which L_sem and then L_ge switch on."""
    # scoring
    bands: tuple[OpenFraction, OpenFraction] = (0.3, 0.3)
    """The shares of classes, by training frequency of the pooled client data, in the 'many' and 'few' bands (the
    rest is 'medium')."""
    score_per_class: PositiveInt = 100
    """Pseudo-features per class generated to score the denoiser (feature FID per band, class fidelity)."""

    @model_validator(mode="after")
    def _consistent(self) -> LdmlrConfig:
        if self.phases[0] >= self.phases[1]:
            raise ValueError(f"ldmlr.phases must increase, got {list(self.phases)}")
        if sum(self.bands) >= 1:
            raise ValueError(f"ldmlr.bands (many, few) must leave a medium band: they sum to {sum(self.bands)}")
        if self.method == "e2e" and self.prediction == "epsilon":
            raise ValueError("ldmlr.method=e2e needs ldmlr.prediction=sample: z0_hat from an epsilon prediction "
                             "divides by sqrt(abar_t), about 1e-3 at the last timesteps, and the semantic terms blow "
                             "up")
        return self
