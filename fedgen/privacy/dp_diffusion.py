"""dp-promise's two-phase private training of a denoiser (Wang et al., USENIX Security 2024), with opacus for DP-SGD:
one implementation for the feature denoiser (FedDDPM's clients) and the image U-Net (the diffusion task's clients).

Data arrive bounded in [-1, 1]^d (phase I's bound assumes it). Each round a client trains:

- phase I, timesteps [S, T): the plain loss, Adam, on Poisson batches (rate q_1), **unconditional** (the null label):
  the forward noise covers the data, not the labels, so no label may reach these steps;
- phase II, timesteps [0, S): class-conditional DP-SGD through opacus (per-sample clipping at ``max_grad_norm``,
  Gaussian noise ``sigma * max_grad_norm``, Adam), on Poisson batches (rate q_2). Each example's loss is the mean
  over K (``noise_multiplicity``) draws of (t, noise) before its gradient is clipped (dp-promise's noise
  multiplicity; the accountant does not count it).

A round's plan (rates, steps, noise) is :func:`fedgen.privacy.accountant.plan`'s. What a model needs is a
:class:`Denoising`: how to draw a batch's (t, noise, labels) and the loss of a drawn batch.
The feature denoiser sees a (batch, K, d) tensor and opacus' per-sample gradients of its linear layers sum over the K
axis (hooks); the U-Net sees the K draws as batch * K images, opacus computes per-sample gradients with functorch
(its hook-based conv samplers give wrong, zero, gradients for diffusers' U-Net blocks: a test holds this), and each
example's gradient is the mean over its K rows before clipping.

Poisson batches are drawn here (a Bernoulli mask per example, from the run's generator) rather than by opacus'
DPDataLoader, which cannot start on an empty batch; an empty batch in phase II still takes an optimizer step with
zero per-sample gradients, so its noise is added and the step counted, as the accountant assumes. With
``dp.physical_batch_size`` a logical batch is processed in chunks (opacus' BatchMemoryManager scheme: each chunk's
per-sample gradients are clipped and summed, then freed; the noise is added once, at the logical step), which bounds
the per-sample gradients held to one chunk's. Terms a strategy adds to local training that depend on the weights
only (FedProx's proximal term, FedPhD's sparsity term) are added to the noisy gradient in phase II: post-processing,
no privacy cost. Without ``dp.epsilon`` and ``dp.sigma`` the same phases run without clipping or noise (the
non-private reference).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedgen.compat.opacus import remove_hooks
from fedgen.config import DpConfig
from fedgen.diffusion import features as fd
from fedgen.privacy.accountant import Plan
from fedgen.train import Penalty


@dataclass(frozen=True)
class Denoising:
    """What the two-phase trainer needs of a model and its ``n`` examples."""

    n: int
    draw: Callable[[torch.Tensor, int, int, int, bool, torch.Generator], tuple[torch.Tensor, ...]]
    """(example indices, K, lowest t, end of t, conditional, generator) -> the batch's tensors, each with the
    examples along its first axis (K draws each; the null label when not conditional)."""
    loss: Callable[[nn.Module, tuple[torch.Tensor, ...]], torch.Tensor]
    """(model, a drawn batch or a slice of it along the first axis) -> the mean per-example loss."""
    draws_in_batch: bool = False
    """The model sees an example's K draws as K rows of its batch (a U-Net): per-sample gradients are averaged over
    each example's K rows before clipping. False: the K draws are an inner axis the per-sample gradients sum over."""
    grad_sample_mode: str = "hooks"
    """opacus' per-sample gradient engine for this model ('hooks' or 'functorch')."""


def _poisson(n: int, q: float, gen: torch.Generator) -> torch.Tensor:
    return torch.nonzero(torch.rand(n, generator=gen) < q).flatten()


def _chunks(batch: tuple[torch.Tensor, ...], size: int | None) -> list[tuple[torch.Tensor, ...]]:
    n = len(batch[0])
    size = size or n
    return [tuple(v[i:i + size] for v in batch) for i in range(0, n, size)]


def _to(batch: tuple[torch.Tensor, ...], device: torch.device) -> tuple[torch.Tensor, ...]:
    return tuple(v.to(device) for v in batch)


def _phase1(model: nn.Module, task: Denoising, p: Plan, dp: DpConfig, timesteps: int, penalties: Sequence[Penalty],
            device: torch.device, gen: torch.Generator) -> float:
    """Timesteps [S, T), unconditional, plain Adam on Poisson batches (an empty one is skipped: nothing is released
    by it). Returns the mean loss."""
    opt = torch.optim.Adam(model.parameters(), lr=dp.lr1)
    total = seen = 0.0
    for _ in range(p.steps1):
        idx = _poisson(task.n, p.q1, gen)
        if not len(idx):
            continue
        loss = task.loss(model, _to(task.draw(idx, 1, dp.split_step, timesteps, False, gen), device))
        total, seen = total + loss.item() * len(idx), seen + len(idx)
        for pen in penalties:
            loss = loss + pen(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return total / max(1, seen)


def _mean_over_draws(params: list[nn.Parameter], k: int) -> None:
    """Per-sample gradients of batch * K rows -> of the batch's examples (the mean over each example's K rows)."""
    for param in params:
        if param.grad_sample is not None:
            param.grad_sample = param.grad_sample.view(-1, k, *param.shape).mean(1)


def _add_penalty_grads(model: nn.Module, penalties: Sequence[Penalty]) -> None:
    """The gradient of weight-only terms, added to the (noisy) gradient."""
    params = [q for q in model.parameters() if q.requires_grad]
    grads = torch.autograd.grad(sum(pen(model) for pen in penalties), params, allow_unused=True)
    for q, g in zip(params, grads, strict=True):
        if g is not None:
            q.grad = g if q.grad is None else q.grad + g


def _phase2(model: nn.Module, task: Denoising, p: Plan, dp: DpConfig, penalties: Sequence[Penalty],
            device: torch.device, gen: torch.Generator) -> float:
    """Timesteps [0, S), class-conditional, DP-SGD through opacus (plain Adam when non-private). Returns the mean
    loss."""
    opt = torch.optim.Adam(model.parameters(), lr=dp.lr2)
    private = p.sigma is not None
    wrapped = model
    with warnings.catch_warnings():  # opacus' notes on its seeded RNG and on hooks of inputs without grad, and its
        # functorch path's on integer inputs (the class embedding's labels), which it takes for mixed precision
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message="In CPU autocast, but the target dtype is not supported")
        if private:
            loader = DataLoader(TensorDataset(torch.zeros(task.n)), batch_size=max(1, round(task.n * p.q2)))
            noise_gen = gen if device.type == "cpu" else torch.Generator(device).manual_seed(
                int(torch.randint(2**62, (1,), generator=gen)))
            wrapped, opt, _ = PrivacyEngine(accountant="rdp").make_private(
                module=model, optimizer=opt, data_loader=loader, noise_multiplier=p.sigma,
                max_grad_norm=dp.max_grad_norm, poisson_sampling=False, noise_generator=noise_gen,
                grad_sample_mode=task.grad_sample_mode)
        try:
            return _phase2_steps(model, wrapped, opt, task, p, dp, penalties, device, gen)
        finally:  # opacus' hooks come off the caller's model even when a step fails
            if private:
                remove_hooks(wrapped)


def _phase2_steps(model: nn.Module, wrapped: nn.Module, opt, task: Denoising, p: Plan, dp: DpConfig,
                  penalties: Sequence[Penalty], device: torch.device, gen: torch.Generator) -> float:
    private, k = p.sigma is not None, dp.noise_multiplicity
    params = [q for q in model.parameters() if q.requires_grad]
    total = seen = 0.0
    for _ in range(p.steps2):
        idx = _poisson(task.n, p.q2, gen)
        opt.zero_grad(set_to_none=True)
        if not len(idx) and not private:
            continue
        if len(idx):
            chunks = _chunks(task.draw(idx, k, 0, dp.split_step, True, gen), dp.physical_batch_size)
        else:  # an empty Poisson batch: zero per-sample gradients, and still the noisy step
            chunks = []
            for param in params:
                param.grad_sample = torch.zeros((0, *param.shape), device=param.device)
        for i, chunk in enumerate(chunks):
            loss = task.loss(wrapped, _to(chunk, device))
            total, seen = total + loss.item() * len(chunk[0]), seen + len(chunk[0])
            if private:
                loss.backward()
                if task.draws_in_batch:
                    _mean_over_draws(params, k)
                if i < len(chunks) - 1:  # clip and sum this chunk's per-sample gradients, free them
                    opt.signal_skip_step(do_skip=True)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            else:
                (loss * (len(chunk[0]) / len(idx))).backward()
        # private: clipped, summed, noised and scaled by opacus first; then the weight-only terms, then Adam
        if not private or opt.pre_step():
            if penalties:
                _add_penalty_grads(model, penalties)
            (opt.original_optimizer if private else opt).step()
    return total / max(1, seen)


def train_phases(model: nn.Module, task: Denoising, p: Plan, dp: DpConfig, timesteps: int, device: torch.device,
                 gen: torch.Generator, penalties: Sequence[Penalty] = ()) -> dict[str, float]:
    """One round of both phases on ``model`` (on ``device``, in train mode); returns the phases' mean losses."""
    return {"dp/loss-phase1": _phase1(model, task, p, dp, timesteps, penalties, device, gen),
            "dp/loss-phase2": _phase2(model, task, p, dp, penalties, device, gen)}


def feature_denoising(diffusion: fd.FeatureDiffusion, zn: torch.Tensor, y: torch.Tensor, scheduler,
                      snr_gamma: float | None) -> Denoising:
    """The feature denoiser's batches: (batch, K, d) features, (batch, K) labels, timesteps and noise."""

    def draw(idx, k, low, high, conditional, gen):
        b, d = len(idx), zn.shape[1]
        t = torch.randint(low, high, (b, k), generator=gen)
        noise = torch.randn((b, k, d), generator=gen)
        labels = y[idx][:, None].expand(b, k) if conditional else torch.full(t.shape, diffusion.null_label)
        return zn[idx][:, None].expand(b, k, d), labels, t, noise

    def loss(model, batch):
        z0, labels, t, noise = batch
        pred = model(fd.noised(scheduler, z0, noise, t), t, labels)
        return fd.weighted_error(pred, z0, noise, t, scheduler, snr_gamma).mean(1).mean()

    return Denoising(len(y), draw, loss)


def train_two_phase(diffusion: fd.FeatureDiffusion, zn: torch.Tensor, y: torch.Tensor, p: Plan, dp: DpConfig,
                    scheduler, snr_gamma: float | None, device: torch.device,
                    gen: torch.Generator) -> dict[str, float]:
    """One round of both phases on bounded features ``zn`` (n, d), phase I on the model's null label; returns the
    phases' mean losses."""
    if zn.numel() and (zn.abs().max() > 1 + 1e-6):
        raise ValueError("dp-promise's phase I bound needs features in [-1, 1]^d")
    if p.steps1 and diffusion.null_label is None:
        raise ValueError("phase I trains unconditionally: the denoiser needs a null label (build it with null_from)")
    denoiser = diffusion.denoiser.to(device).train()
    return train_phases(denoiser, feature_denoising(diffusion, zn, y, scheduler, snr_gamma), p, dp,
                        scheduler.config.num_train_timesteps, device, gen)
