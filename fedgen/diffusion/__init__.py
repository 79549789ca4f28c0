"""Class-conditional image diffusion: a diffusers U-Net and DDPM noise schedule, its local training and DDIM sampling.

The math of the ``train.diffusion`` client role and of the diffusion reference runs. Noise schedules, the forward
process (``add_noise``), v-targets and the DDIM sampler are diffusers'; this module composes them:

    loss = || f(x_t, t, y) - target ||^2,  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,  t ~ U{0..T-1},
    target = eps (epsilon prediction) or sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (v-prediction).
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from torch import nn

from fedgen.config import DiffusionConfig, ExperimentConfig
from fedgen.data.images import ImageSet
from fedgen.train import Penalty, TrainResult, loader

UNETS = {
    # block_out_channels, layers_per_block, attention per resolution level, GroupNorm groups
    "tiny": ((16, 32), 1, (False, False), 8),
    "digits": ((16, 32, 64), 1, (False, True, True), 8),
    "paper": ((128, 256, 256, 256), 2, (False, True, False, False), 32),
}
"""U-Net sizes. 'paper' is the DDPM CIFAR-10 U-Net FedPhD trains (35.7M parameters with 10 class embeddings):
attention at the second level, 16x16 for 32x32 images."""


def build_unet(cfg: DiffusionConfig, num_classes: int, image_size: int, null_from: int | None = None) -> UNet2DModel:
    """A class-conditional U-Net (a class embedding added to the time embedding), RGB in and out. With
    ``null_from``, one class embedding more, the null label ``num_classes``, for the timesteps from ``null_from`` on
    (dp-promise's unconditional phase I); sampling uses it there."""
    channels, layers, attention, groups = UNETS[cfg.unet]
    unet = UNet2DModel(
        sample_size=image_size, in_channels=3, out_channels=3, block_out_channels=channels,
        layers_per_block=layers, norm_num_groups=groups,
        num_class_embeds=num_classes if null_from is None else num_classes + 1,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
    )
    unet.representation = "mid_block"  # MOON's representation (FedPhD's MOON row)
    unet.null_from, unet.null_label = null_from, None if null_from is None else num_classes
    return unet


def conditioning(model: nn.Module, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The class labels the U-Net is given at timestep(s) t: the null label from its ``null_from`` on, else
    ``labels``."""
    null_from = getattr(model, "null_from", None)
    return labels if null_from is None else torch.where(t >= null_from, model.null_label, labels)


def noise_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
        beta_schedule="squaredcos_cap_v2" if cfg.beta_schedule == "cosine" else "linear",
        prediction_type=cfg.prediction, clip_sample=True,
    )


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)


def diffusion_loss(model: nn.Module, scheduler: DDPMScheduler, x0: torch.Tensor, labels: torch.Tensor,
                   noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The simple DDPM loss of one batch (x0 in [-1, 1]) at the given noise and timesteps."""
    noisy = scheduler.add_noise(x0, noise, timesteps)
    target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, timesteps)
    return F.mse_loss(model(noisy, timesteps, class_labels=labels).sample.float(), target)


def autocast(kind: str, device: torch.device):
    if kind == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if kind == "bf16" else torch.float16)


def steps_per_round(num_examples: int, cfg: DiffusionConfig) -> int:
    return math.ceil(num_examples / cfg.batch_size) * cfg.local_epochs


def train(model: UNet2DModel, data: ImageSet, cfg: DiffusionConfig, device: torch.device, seed: int,
          server_round: int = 1, penalties: list[Penalty] = ()) -> TrainResult:
    """``cfg.local_epochs`` passes of Adam over ``data`` with warm-up, gradient clipping and optional EMA.

    The warm-up continues from round to round: round r starts at step (r - 1) * steps_per_round. Shuffling, noise
    and timesteps come from generators seeded by ``seed``; the process-wide RNG is left alone.
    """
    if len(data) == 0:
        raise ValueError("cannot train on an empty dataset")
    model.to(device).train()
    scheduler = noise_scheduler(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    first = (server_round - 1) * steps_per_round(len(data), cfg)
    warmup = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (first + i + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.autocast == "fp16" and device.type == "cuda")
    ema = EMAModel(model.parameters(), decay=cfg.ema_decay, use_ema_warmup=True) if cfg.ema_decay else None
    gen = torch.Generator().manual_seed(seed)
    size = model.config.sample_size
    total, seen, steps, lr_sum = 0.0, 0, 0, 0.0
    for epoch in range(cfg.local_epochs):
        for x, y in loader(data, cfg.batch_size, shuffle=True, seed=seed + epoch):
            x0 = resize(x, size)
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.randint(0, cfg.num_train_timesteps, (len(y),), generator=gen)
            x0, y, noise, t = x0.to(device), y.to(device), noise.to(device), t.to(device)
            with autocast(cfg.autocast, device):
                loss = diffusion_loss(model, scheduler, x0, y, noise, t)
            total += loss.item() * len(y)
            seen += len(y)
            for pen in penalties:
                loss = loss + pen(model)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            lr_sum += opt.param_groups[0]["lr"]
            warmup.step()
            if ema is not None:
                ema.step(model.parameters())
            steps += 1
    if ema is not None:
        ema.copy_to(model.parameters())
    return TrainResult(loss=total / seen, num_examples=len(data), steps=steps, lr_sum=lr_sum)


@torch.no_grad()
def sample(model: UNet2DModel, cfg: DiffusionConfig, labels: torch.Tensor, steps: int, seed: int,
           device: torch.device, batch_size: int = 250) -> torch.Tensor:
    """DDIM (eta = 0, ``steps`` steps) from the model's noise schedule: images of the given classes in [0, 1]."""
    model.to(device).eval()
    ddim = DDIMScheduler.from_config(noise_scheduler(cfg).config)
    ddim.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    size = model.config.sample_size
    out = []
    for y in labels.split(batch_size):
        x = torch.randn((len(y), 3, size, size), generator=gen).to(device)
        y = y.to(device)
        for t in ddim.timesteps:
            with autocast(cfg.autocast, device):
                pred = model(x, t, class_labels=conditioning(model, t, y)).sample
            x = ddim.step(pred.float(), t, x).prev_sample
        out.append(((x.clamp(-1, 1) + 1) / 2).cpu())
    return torch.cat(out)


def image_denoising(x0: torch.Tensor, labels: torch.Tensor, scheduler: DDPMScheduler,
                    null_label: int | None):
    """The U-Net's batches for dp-promise's trainer (a :class:`fedgen.privacy.dp_diffusion.Denoising`): each
    example's K draws of (t, noise) as K rows of the batch."""
    from fedgen.privacy.dp_diffusion import Denoising

    def draw(idx, k, low, high, conditional, gen):
        x = x0[idx].repeat_interleave(k, 0)
        t = torch.randint(low, high, (len(x),), generator=gen)
        noise = torch.randn(x.shape, generator=gen)
        y = labels[idx].repeat_interleave(k) if conditional else torch.full((len(x),), null_label)
        return tuple(v.view(len(idx), k, *v.shape[1:]) for v in (x, y, t, noise))

    def loss(model, batch):
        x, y, t, noise = (v.flatten(0, 1) for v in batch)
        return diffusion_loss(model, scheduler, x, y, noise, t)

    return Denoising(len(labels), draw, loss, draws_in_batch=True, grad_sample_mode="functorch")


def private_plan(num_examples: int, cfg: ExperimentConfig, image_size: int):
    """This round's :class:`fedgen.privacy.accountant.Plan` for a client with ``num_examples`` images:
    d = 3 x size x size, images in [-1, 1]."""
    from fedgen.privacy import accountant
    abar = accountant.abar_at(noise_scheduler(cfg.diffusion), cfg.dp.split_step)
    return accountant.plan(num_examples, cfg.dp, cfg.rounds, 3 * image_size**2, abar)


def train_private(model: UNet2DModel, data: ImageSet, cfg: ExperimentConfig, p, device: torch.device, seed: int,
                  penalties: list[Penalty] = ()) -> TrainResult:
    """One round of dp-promise's two phases (plan ``p``) on ``data``, in place of :func:`train` (``cfg.dp``'s
    batches, epochs and learning rates), from a generator seeded by ``seed``. The loss reported is phase II's."""
    from fedgen.privacy import dp_diffusion

    if len(data) == 0:
        raise ValueError("cannot train on an empty dataset")
    if p.steps1 and getattr(model, "null_label", None) is None:
        raise ValueError("phase I trains unconditionally: the U-Net needs a null label (build it with null_from)")
    model.to(device).train()
    scheduler = noise_scheduler(cfg.diffusion)
    x, y = data.tensors()
    x0 = resize(x, model.config.sample_size).clamp(-1, 1)  # phase I's bound: images in [-1, 1]
    task = image_denoising(x0, y, scheduler, getattr(model, "null_label", None))
    losses = dp_diffusion.train_phases(model, task, p, cfg.dp, cfg.diffusion.num_train_timesteps, device,
                                       torch.Generator().manual_seed(seed), penalties)
    return TrainResult(loss=losses["dp/loss-phase2"], num_examples=len(data), steps=p.steps1 + p.steps2,
                       lr_sum=0.0)
