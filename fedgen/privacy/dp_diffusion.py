"""dp-promise's two-phase training of a conditional feature denoiser (METHODS.md 5b), with opacus for DP-SGD.

Features arrive bounded in [-1, 1]^d (phase I's bound assumes it). Each round a client trains:

- phase I, timesteps [S, T): the plain loss, Adam, on Poisson batches (rate q_1), **unconditional** (the null label):
  the forward noise covers the features, not the labels, so no label may reach these steps;
- phase II, timesteps [0, S): class-conditional DP-SGD through opacus (per-sample clipping at ``max_grad_norm``,
  Gaussian noise ``sigma * max_grad_norm``, Adam), on Poisson batches (rate q_2). Each example's loss is the mean
  over K (``noise_multiplicity``) draws of (t, noise) before its gradient is clipped (dp-promise's noise
  multiplicity; the accountant does not count it): the denoiser sees a (batch, K, d) tensor, and opacus' per-sample
  gradients sum over the K axis.

Poisson batches are drawn here (a Bernoulli mask per example, from the run's generator) rather than by opacus'
DPDataLoader, which cannot start on an empty batch; an empty batch in phase II still takes an optimizer step with
zero per-sample gradients, so its noise is added and the step counted, as the accountant assumes.
Without ``dp.epsilon`` and ``dp.sigma`` the same phases run without clipping or noise (the non-private reference).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from fedgen.config import DpConfig
from fedgen.diffusion import features as fd
from fedgen.privacy import gdp


@dataclass(frozen=True)
class Plan:
    """One client's round of private training: its sampling rates, step counts, noise and privacy charge."""

    q1: float
    steps1: int
    q2: float
    steps2: int
    sigma: float | None
    """The noise multiplier (None: non-private)."""
    mu1: float
    mu2: float


def abar_at(scheduler, step: int) -> float:
    """abar at the split S: the cumulative alpha of the last phase-II timestep's successor (the official
    ``alphas_cumprod[S - 1]``)."""
    return float(scheduler.alphas_cumprod[step - 1])


def plan(n: int, dp: DpConfig, rounds: int, dim: int, abar_s: float) -> Plan:
    """A client with ``n`` examples: q = 1 / ceil(n / batch) and ``epochs * ceil(n / batch)`` steps per phase (the
    official loaders' counts); sigma as configured, or calibrated so that ``rounds`` such rounds spend exactly the
    budget (a client trains in at most every round)."""
    if n < 1:
        raise ValueError("cannot train on an empty dataset")
    per1, per2 = math.ceil(n / dp.batch_size1), math.ceil(n / dp.batch_size2)
    q1, steps1, q2, steps2 = 1 / per1, dp.epochs1 * per1, 1 / per2, dp.epochs2 * per2
    mu1 = gdp.phase1_mu(q1, steps1, dim, abar_s)
    sigma = dp.sigma
    if sigma is None and dp.epsilon is not None:
        sigma = gdp.sigma_for(dp.epsilon, dp.delta, mu1 * math.sqrt(rounds), q2, steps2 * rounds)
    private = dp.private
    return Plan(q1, steps1, q2, steps2, sigma if private else None, mu1 if private else math.inf,
                gdp.phase2_mu(q2, steps2, sigma) if private else math.inf)


def _poisson(n: int, q: float, gen: torch.Generator) -> torch.Tensor:
    return torch.nonzero(torch.rand(n, generator=gen) < q).flatten()


def _loss(denoiser, scheduler, z0: torch.Tensor, y: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
          snr_gamma: float | None) -> torch.Tensor:
    """Per-example loss of (B, K, d) features at (B, K) timesteps: the mean over the K draws."""
    pred = denoiser(fd.noised(scheduler, z0, noise, t), t, y)
    return fd.weighted_error(pred, z0, noise, t, scheduler, snr_gamma).mean(1)


def _draws(zb, yb, k: int, low: int, high: int, gen: torch.Generator):
    b, d = zb.shape
    t = torch.randint(low, high, (b, k), generator=gen)
    noise = torch.randn((b, k, d), generator=gen)
    return zb[:, None].expand(b, k, d), yb[:, None].expand(b, k), t, noise


def _phase1(denoiser, zn, y, p: Plan, dp: DpConfig, scheduler, null_label: int | None, snr_gamma, device,
            gen: torch.Generator) -> float:
    """Timesteps [S, T), unconditional, plain Adam on Poisson batches (an empty one is skipped: nothing is released
    by it). Returns the mean loss."""
    if p.steps1 and null_label is None:
        raise ValueError("phase I trains unconditionally: the denoiser needs a null label (build it with null_from)")
    opt = torch.optim.Adam(denoiser.parameters(), lr=dp.lr1)
    total = seen = 0.0
    for _ in range(p.steps1):
        idx = _poisson(len(y), p.q1, gen)
        if not len(idx):
            continue
        z, _, t, noise = _draws(zn[idx], y[idx], 1, dp.split_step, scheduler.config.num_train_timesteps, gen)
        null = torch.full(t.shape, null_label)
        loss = _loss(denoiser, scheduler, *(v.to(device) for v in (z, null, t, noise)), snr_gamma).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total, seen = total + loss.item() * len(idx), seen + len(idx)
    return total / max(1, seen)


def _phase2(denoiser, zn, y, p: Plan, dp: DpConfig, scheduler, snr_gamma, device, gen: torch.Generator) -> float:
    """Timesteps [0, S), class-conditional, DP-SGD through opacus (plain Adam when non-private). Returns the mean
    loss."""
    opt = torch.optim.Adam(denoiser.parameters(), lr=dp.lr2)
    model = denoiser
    with warnings.catch_warnings():  # opacus' notes on its seeded RNG and on hooks of inputs without grad
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        if p.sigma is not None:
            loader = DataLoader(TensorDataset(zn, y), batch_size=max(1, round(len(y) * p.q2)))
            noise_gen = gen if device.type == "cpu" else torch.Generator(device).manual_seed(
                int(torch.randint(2**62, (1,), generator=gen)))
            model, opt, _ = PrivacyEngine(accountant="rdp").make_private(
                module=denoiser, optimizer=opt, data_loader=loader, noise_multiplier=p.sigma,
                max_grad_norm=dp.max_grad_norm, poisson_sampling=False, noise_generator=noise_gen)
        total = seen = 0.0
        for _ in range(p.steps2):
            idx = _poisson(len(y), p.q2, gen)
            opt.zero_grad(set_to_none=True)
            if len(idx):
                z, yk, t, noise = _draws(zn[idx], y[idx], dp.noise_multiplicity, 0, dp.split_step, gen)
                loss = _loss(model, scheduler, *(v.to(device) for v in (z, yk, t, noise)), snr_gamma).mean()
                loss.backward()
                total, seen = total + loss.item() * len(idx), seen + len(idx)
            elif p.sigma is None:
                continue
            else:  # an empty Poisson batch: zero per-sample gradients, and still the noisy step
                for param in denoiser.parameters():
                    param.grad_sample = torch.zeros((0, *param.shape), device=param.device)
            opt.step()
        if p.sigma is not None:
            model._close()
    return total / max(1, seen)


def train_two_phase(diffusion: fd.FeatureDiffusion, zn: torch.Tensor, y: torch.Tensor, p: Plan, dp: DpConfig,
                    scheduler, snr_gamma: float | None, device: torch.device,
                    gen: torch.Generator) -> dict[str, float]:
    """One round of both phases on bounded features ``zn`` (n, d), phase I on the model's null label; returns the
    phases' mean losses."""
    if zn.numel() and (zn.abs().max() > 1 + 1e-6):
        raise ValueError("dp-promise's phase I bound needs features in [-1, 1]^d")
    denoiser = diffusion.denoiser.to(device).train()
    return {"dp/loss-phase1": _phase1(denoiser, zn, y, p, dp, scheduler, diffusion.null_label, snr_gamma, device,
                                      gen),
            "dp/loss-phase2": _phase2(denoiser, zn, y, p, dp, scheduler, snr_gamma, device, gen)}
