"""Private federated feature diffusion (dp-promise clients, FedDDPM server): the pieces the server and the clients
share.

The model is LDMLR's (:class:`fedgen.ldmlr.FeatureClassifier`): a classifier (encoder E, head G) and a conditional
feature denoiser. Here E is trained on the server's public split only, so it carries nothing of a client; the
denoiser has one label more than the data, the null label that dp-promise's phase I trains on (timesteps from S on),
and its standardisation (the public features' mean and ``dp.feature_bound`` times their std) maps features into
[-1, 1]^d after clipping.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedgen import ldmlr
from fedgen.config import ExperimentConfig
from fedgen.data import Federation
from fedgen.diffusion import features as fd
from fedgen.ldmlr import FeatureClassifier, frechet, spread


def model_fn(cfg: ExperimentConfig, fed: Federation) -> Callable[[], FeatureClassifier]:
    """LDMLR's model whose denoiser has the null label for dp-promise's phase I (timesteps from dp.split_step on)."""
    return ldmlr.model_fn(cfg, fed, null_from=cfg.dp.split_step)


def set_bounds(diffusion: fd.FeatureDiffusion, public_z: torch.Tensor, bound: float) -> None:
    """The standardisation that maps (most) features into [-1, 1]: the public features' mean and ``bound`` std."""
    with torch.no_grad():
        diffusion.mean.copy_(public_z.mean(0))
        diffusion.std.copy_(public_z.std(0, unbiased=False).clamp_min(1e-3) * bound)


def bounded(diffusion: fd.FeatureDiffusion, z: torch.Tensor) -> torch.Tensor:
    """Raw features standardised and clipped into [-1, 1]^d."""
    return diffusion.normalize(z).clamp(-1.0, 1.0)


def denoiser_steps(diffusion: fd.FeatureDiffusion, zn: torch.Tensor, y: torch.Tensor, steps: int, batch_size: int,
                   lr: float, scheduler, snr_gamma: float | None, gen: torch.Generator,
                   device: torch.device) -> float:
    """Non-private Adam steps of the denoiser on bounded features (server side: FedDDPM's correction, a fit to
    uploaded pseudo-features), the null label at the unconditional timesteps as in training. Returns the mean
    loss."""
    if not steps or not len(y):
        return 0.0
    denoiser = diffusion.denoiser.to(device).train()
    opt = torch.optim.Adam(denoiser.parameters(), lr=lr)
    total = 0.0
    for _ in range(steps):
        idx = torch.randint(0, len(y), (min(batch_size, len(y)),), generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
        labels = diffusion.conditioning(t, y[idx])
        noise = torch.randn(zn[idx].shape, generator=gen)
        zb, labels, noise, t = (v.to(device) for v in (zn[idx], labels, noise, t))
        loss, _ = fd.ldm_loss(diffusion, scheduler, zb, labels, noise, t, snr_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item()
    return total / steps


def generate(diffusion: fd.FeatureDiffusion, scheduler, per_class: int, num_classes: int, steps: int,
             gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` raw pseudo-features of every class, and their labels."""
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return fd.sample(diffusion.eval(), scheduler, labels, steps, gen).cpu(), labels


def quick_score(fake: torch.Tensor, public_z: torch.Tensor) -> float:
    """FedDDPM+'s quick test: the scale-free Frechet distance of generated to public features (lower is better)."""
    return frechet(public_z, fake, spread(public_z))


def fidelity(head: torch.nn.Module, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Whether G reads each (raw) feature as its label."""
    device = next(head.parameters()).device
    with torch.no_grad():
        return head(z.to(device)).argmax(1).cpu() == y
