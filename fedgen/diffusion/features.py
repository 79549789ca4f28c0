"""Feature-space diffusion (LDMLR): a conditional denoiser of a classifier's features and the end-to-end terms.

The noise schedules, the forward process and the DDIM sampler are diffusers' (they work on (batch, dim) tensors);
this module adds the denoisers, the loss, the generation counts and fedgen's semantic terms (the e2e variant):

    L_LDM   = E w_t || f(z_t, t, y) - target ||^2 / d,   z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps
    z0_hat  = f(z_t, t, y)  (x0 prediction)  or  (z_t - sqrt(1 - abar_t) f(z_t, t, y)) / sqrt(abar_t)  (epsilon)
    L_proto = E || z0_hat - mu_y ||^2 / d
    L_cov   = sum_y || Cov(z0_hat | y) - Sigma_y ||_F / d
    L_rad   = E (|| z0_hat - mu_y || - r_y)^2 / d,   r_y = c sqrt(tr Sigma_y)

Features are standardised per dimension (running statistics kept as buffers of :class:`FeatureDiffusion`) before
they are noised, so the schedule's unit-variance noise fits them; prototypes and the semantic terms live in that
standardised space, and the division by d keeps every term on the scale of the per-dimension DDPM loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from fedgen.config import LdmlrConfig


def feature_scheduler(cfg: LdmlrConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps, prediction_type=cfg.prediction, clip_sample=False,
        beta_schedule="squaredcos_cap_v2" if cfg.beta_schedule == "cosine" else "linear",
    )


class _Conditioning(nn.Module):
    """The time embedding (sinusoidal, then an MLP) plus a class embedding."""

    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        self.time = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_mlp = TimestepEmbedding(width, width)
        self.label = nn.Embedding(num_classes, width)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """t and y of one shape, (batch,) or (batch, K); the embedding gains a last axis."""
        return self.time_mlp(self.time(t.reshape(-1)).reshape(*t.shape, -1)) + self.label(y)


class MLPDenoiser(nn.Module):
    """Residual MLP blocks (LayerNorm, SiLU, Linear) with the conditioning added to each block's input."""

    def __init__(self, dim: int, num_classes: int, width: int = 256, depth: int = 3) -> None:
        super().__init__()
        self.cond = _Conditioning(num_classes, width)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
            for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        e = self.cond(t, y)
        h = self.inp(z)
        for block in self.blocks:
            h = h + block(h + e)
        return self.out(h)


class _ResBlock1d(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(min(8, c_in), c_in), nn.Conv1d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(min(8, c_out), c_out), nn.Conv1d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(F.silu(e))[:, :, None]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class UNet1DDenoiser(nn.Module):
    """The official denoiser's shape: a 1-D U-Net over the feature vector as a one-channel sequence, channels
    ``dim * mult`` per level (halving the length between levels), a residual block per level down and up with skip
    connections, the class embedding added to the time embedding."""

    def __init__(self, dim: int, num_classes: int, width: int = 64, mults: list[int] = (1, 2, 4, 8)) -> None:
        super().__init__()
        if dim % 2 ** (len(mults) - 1):
            raise ValueError(f"ldmlr.denoiser=unet1d halves the feature length {len(mults) - 1} times: the feature "
                             f"dimension {dim} must divide by {2 ** (len(mults) - 1)} (shorten ldmlr.unet_mults)")
        emb = 4 * width
        self.cond = _Conditioning(num_classes, emb)
        chans = [width * m for m in mults]
        self.inp = nn.Conv1d(1, width, 3, padding=1)
        self.down = nn.ModuleList()
        c = width
        for c_out in chans:
            self.down.append(_ResBlock1d(c, c_out, emb))
            c = c_out
        self.pool = nn.ModuleList(nn.Conv1d(c, c, 4, stride=2, padding=1) for c in chans[:-1])
        self.mid = _ResBlock1d(c, c, emb)
        ins = [chans[-1], *reversed(chans[1:])]  # what reaches each up block from below
        self.up = nn.ModuleList(_ResBlock1d(c_skip + c_in, c_skip, emb)
                                for c_skip, c_in in zip(reversed(chans), ins, strict=True))
        self.unpool = nn.ModuleList(nn.ConvTranspose1d(c, c, 4, stride=2, padding=1) for c in reversed(chans[1:]))
        c = chans[0]
        self.out = nn.Sequential(nn.GroupNorm(min(8, c), c), nn.SiLU(), nn.Conv1d(c, 1, 3, padding=1))

    def forward(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        e = self.cond(t, y)
        h = self.inp(z[:, None])
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, e)
            skips.append(h)
            if i < len(self.pool):
                h = self.pool[i](h)
        h = self.mid(h, e)
        for i, block in enumerate(self.up):
            if i > 0:
                h = self.unpool[i - 1](h)
            h = block(torch.cat([skips.pop(), h], 1), e)
        return self.out(h)[:, 0]


class FeatureDiffusion(nn.Module):
    """A denoiser of standardised features, with the running per-dimension mean and std it standardises by.

    ``null_from``: the timesteps from this one on were trained unconditionally, on the label ``null_label`` (dp-
    promise's phase I); sampling uses it there."""

    def __init__(self, denoiser: nn.Module, dim: int, null_from: int | None = None,
                 null_label: int | None = None) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.null_from, self.null_label = null_from, null_label
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.denoiser(z_t, t, y)

    def conditioning(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The labels the denoiser is given at timesteps t: the null label from ``null_from`` on, else y."""
        if self.null_from is None:
            return y
        return torch.where(t >= self.null_from, self.null_label, y)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) / self.std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean

    @torch.no_grad()
    def fit_statistics(self, z: torch.Tensor, momentum: float = 1.0) -> None:
        """Set (momentum 1) or move by EMA the standardisation to the features ``z`` (raw)."""
        self.mean.lerp_(z.mean(0), momentum)
        self.std.lerp_(z.std(0, unbiased=False).clamp_min(1e-3), momentum)


def build_feature_diffusion(cfg: LdmlrConfig, dim: int, num_classes: int,
                            null_from: int | None = None) -> FeatureDiffusion:
    """The configured denoiser; with ``null_from``, one label more (``num_classes``, the null label) for the
    unconditional timesteps from ``null_from`` on."""
    labels = num_classes if null_from is None else num_classes + 1
    if cfg.denoiser == "unet1d":
        denoiser = UNet1DDenoiser(dim, labels, cfg.unet_dim, cfg.unet_mults)
    else:
        denoiser = MLPDenoiser(dim, labels, cfg.mlp_width, cfg.mlp_depth)
    return FeatureDiffusion(denoiser, dim, null_from, None if null_from is None else num_classes)


def z0_estimate(pred: torch.Tensor, z_t: torch.Tensor, t: torch.Tensor, scheduler: DDPMScheduler) -> torch.Tensor:
    """The clean feature the denoiser's prediction implies at timestep t."""
    if scheduler.config.prediction_type == "sample":
        return pred
    abar = scheduler.alphas_cumprod.to(z_t.device, z_t.dtype)[t][:, None]
    return (z_t - (1 - abar).sqrt() * pred) / abar.sqrt()


def noised(scheduler: DDPMScheduler, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z_t of features of any leading shape (t of that shape, the feature dimension last)."""
    d = z0.shape[-1]
    return scheduler.add_noise(z0.reshape(-1, d), noise.reshape(-1, d), t.reshape(-1)).reshape(z0.shape)


def weighted_error(pred: torch.Tensor, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                   scheduler: DDPMScheduler, snr_gamma: float | None = None) -> torch.Tensor:
    """The loss of each prediction (shape of t): x0 prediction's squared error weighted by SNR_t (min-SNR clipped at
    ``snr_gamma`` if given), or epsilon's (weighted by min(SNR_t, gamma) / SNR_t if clipped), averaged over the
    feature dimension."""
    abar = scheduler.alphas_cumprod.to(z0.device, z0.dtype)[t]
    snr = abar / (1 - abar)
    clipped = snr.clamp(max=snr_gamma) if snr_gamma else snr
    if scheduler.config.prediction_type == "sample":
        target, weight = z0, clipped
    else:
        target, weight = noise, clipped / snr
    return weight * ((pred - target) ** 2).mean(-1)


def ldm_loss(model: nn.Module, scheduler: DDPMScheduler, z0: torch.Tensor, y: torch.Tensor, noise: torch.Tensor,
             t: torch.Tensor, snr_gamma: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_LDM, z0_hat) of a batch of standardised features (:func:`weighted_error`, averaged over the batch)."""
    z_t = noised(scheduler, z0, noise, t)
    pred = model(z_t, t, y)
    return weighted_error(pred, z0, noise, t, scheduler, snr_gamma).mean(), z0_estimate(pred, z_t, t, scheduler)


def sample(model: FeatureDiffusion, scheduler: DDPMScheduler, labels: torch.Tensor, steps: int,
           generator: torch.Generator, grad: bool = False) -> torch.Tensor:
    """DDIM (eta 0, ``steps`` steps) pseudo-features of the given classes, in the raw feature space; with ``grad``,
    differentiable with respect to the denoiser."""
    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(steps)
    device = model.mean.device
    z = torch.randn((len(labels), model.mean.numel()), generator=generator).to(device)
    labels = labels.to(device)
    with torch.set_grad_enabled(grad):
        for t in ddim.timesteps:
            steps_t = t.expand(len(labels)).to(device)
            pred = model(z, steps_t, model.conditioning(steps_t, labels))
            z = ddim.step(pred, t, z).prev_sample
        return model.denormalize(z)


def generation_counts(class_counts: torch.Tensor, mode: str, ratio: float, minimum: int) -> torch.Tensor:
    """Pseudo-features to generate per class: 'proportional' (official) max(round(ratio n_c), minimum), or
    'fill_tail' max(n_max - n_c, minimum); a class with no example gets none."""
    n = class_counts.long()
    if mode == "proportional":
        counts = torch.tensor([max(int(round(ratio * int(c))), minimum) for c in n])
    elif mode == "fill_tail":
        counts = (n.max() - n).clamp_min(minimum)
    else:
        raise ValueError(f"unknown generation mode {mode!r}")
    return torch.where(n > 0, counts, 0)


class Prototypes:
    """Class means mu_y and covariances Sigma_y of (standardised) features, kept by EMA over batches:
    mu_y <- (1 - lambda w) mu_y + lambda w * mean of the batch's class-y features (w = 1 for real features, lower for
    pseudo-features); a class's first batch sets them. Covariances need two examples of the class in the batch."""

    def __init__(self, num_classes: int, dim: int, momentum: float) -> None:
        self.momentum = momentum
        self.mean = torch.zeros(num_classes, dim)
        self.cov = torch.zeros(num_classes, dim, dim)
        self.seen = torch.zeros(num_classes, dtype=torch.bool)
        self.seen_cov = torch.zeros(num_classes, dtype=torch.bool)

    @torch.no_grad()
    def update(self, z: torch.Tensor, y: torch.Tensor, weight: float = 1.0) -> None:
        z, y = z.detach().float().cpu(), y.cpu()
        step = self.momentum * weight
        for c in y.unique().tolist():
            zc = z[y == c]
            self.mean[c] = zc.mean(0) if not self.seen[c] else self.mean[c].lerp(zc.mean(0), step)
            self.seen[c] = True
            if len(zc) > 1:
                cov = torch.cov(zc.T, correction=0).reshape(z.shape[1], z.shape[1])
                self.cov[c] = cov if not self.seen_cov[c] else self.cov[c].lerp(cov, step)
                self.seen_cov[c] = True

    def radius(self, scale: float) -> torch.Tensor:
        return scale * torch.diagonal(self.cov, dim1=1, dim2=2).sum(1).sqrt()


def proto_loss(z0_hat: torch.Tensor, y: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    return ((z0_hat - mean.to(z0_hat)[y]) ** 2).sum(1).mean() / z0_hat.shape[1]


def cov_loss(z0_hat: torch.Tensor, y: torch.Tensor, cov: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """sum over the batch's classes with two or more examples and a known Sigma_y of the Frobenius distance, / d."""
    total = z0_hat.new_zeros(())
    for c in y.unique().tolist():
        zc = z0_hat[y == c]
        if len(zc) > 1 and known[c]:
            total = total + torch.linalg.matrix_norm(torch.cov(zc.T, correction=0) - cov[c].to(zc))
    return total / z0_hat.shape[1]


def rad_loss(z0_hat: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    dist = (z0_hat - mean.to(z0_hat)[y]).norm(dim=1)
    return ((dist - radius.to(z0_hat)[y]) ** 2).mean() / z0_hat.shape[1]
