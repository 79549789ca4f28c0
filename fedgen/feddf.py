"""FedDF's math (Lin et al., "Ensemble Distillation for Robust Model Fusion in Federated Learning", NeurIPS 2020),
as plain functions: architecture groups, the students' starting points, the ensemble teacher, the distillation loss,
and distillation with early stopping that returns the best student.

For every architecture group g, each round:
    x_0^g     = the uniform average of the group's received models (the official code's; weighted by n_k: an option)
    teacher   = softmax(mean over *all* received models k of f_k(x) / T)
    x^g      <- argmin KL(teacher || softmax(f_x^g(x) / T)) over unlabelled distillation inputs x, by Adam with a cosine
                schedule, gradients clipped; the student is scored every ``eval_every`` steps (from step 0) and the best
                one is kept; distillation stops ``patience`` steps after the last strict improvement, or at
                ``max_steps``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedgen.config import StrategyConfig

SEP = "/"
"""Global arrays hold every group's model under '<architecture>/<state-dict key>'."""


def assign_architectures(num_clients: int, blocks: Sequence[str], explicit: dict[int, str],
                         default: str) -> list[str]:
    """The architecture of each partition id: contiguous blocks of ids (client k gets blocks[k * A // N], as in the
    official code), then the explicit map; ``default`` for everyone when there are no blocks."""
    arch = [blocks[k * len(blocks) // num_clients] if blocks else default for k in range(num_clients)]
    for k, name in explicit.items():
        arch[k] = name
    return arch


def join(groups: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One state dict of every group's model (keys '<architecture>/<key>')."""
    return {f"{arch}{SEP}{k}": v for arch, state in groups.items() for k, v in state.items()}


def split(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The inverse of :func:`join`."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, v in state.items():
        arch, _, k = key.partition(SEP)
        groups.setdefault(arch, {})[k] = v
    return groups


@torch.no_grad()
def ensemble_logits(models: Sequence[nn.Module], x: torch.Tensor, batch_size: int,
                    device: torch.device) -> torch.Tensor:
    """The mean over ``models`` (in eval mode) of their logits on ``x``: (N, classes), on the CPU."""
    out = torch.zeros(0)
    for i, model in enumerate(models):
        model.to(device).eval()
        logits = torch.cat([model(x[s:s + batch_size].to(device)).float().cpu()
                            for s in range(0, len(x), batch_size)])
        out = logits if i == 0 else out + logits
    return out / len(models)


def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.softmax(logits / temperature, dim=1)


def distillation_loss(student_logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(targets || softmax(student / T)), summed over classes and averaged over the batch ('batchmean'); no T^2
    factor, as in the official code."""
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=1), targets, reduction="batchmean")


class EarlyStop:
    """The best score seen and when it was seen; ``done`` once ``patience`` steps passed without a strict
    improvement."""

    def __init__(self, patience: int, higher_is_better: bool) -> None:
        self.patience, self.higher = patience, higher_is_better
        self.best: float | None = None
        self.best_step = 0

    def update(self, step: int, score: float) -> bool:
        """Record the score at ``step``; True when it is a new best."""
        if self.best is None or (score > self.best if self.higher else score < self.best):
            self.best, self.best_step = score, step
            return True
        return False

    def done(self, step: int) -> bool:
        return step - self.best_step >= self.patience


@dataclass
class DistillResult:
    state: dict[str, torch.Tensor]
    """The best student's state dict (CPU)."""
    steps: int
    best_step: int
    initial_score: float
    best_score: float


def kl_score(x: torch.Tensor, targets: torch.Tensor, temperature: float, batch_size: int,
             device: torch.device) -> Callable[[nn.Module], float]:
    """The label-free stop signal: the mean KL from the ensemble to the student on held-out inputs (lower is
    better)."""

    @torch.no_grad()
    def score(model: nn.Module) -> float:
        model.eval()
        total = 0.0
        for s in range(0, len(x), batch_size):
            logits = model(x[s:s + batch_size].to(device))
            total += distillation_loss(logits, targets[s:s + batch_size].to(device), temperature).item() * len(
                logits)
        return total / len(x)

    return score


def accuracy_score(x: torch.Tensor, labels: torch.Tensor, batch_size: int,
                   device: torch.device) -> Callable[[nn.Module], float]:
    """The official code's stop signal: top-1 accuracy on a labelled server split (higher is better)."""

    @torch.no_grad()
    def score(model: nn.Module) -> float:
        model.eval()
        right = sum((model(x[s:s + batch_size].to(device)).argmax(1).cpu() == labels[s:s + batch_size]).sum().item()
                    for s in range(0, len(x), batch_size))
        return right / len(x)

    return score


def distill(student: nn.Module, x: torch.Tensor, targets: torch.Tensor, score: Callable[[nn.Module], float],
            higher_is_better: bool, settings: StrategyConfig, device: torch.device, seed: int) -> DistillResult:
    """Distil ``targets`` (the teacher's soft labels of ``x``) into ``student``; return the best-scoring student.
    ``settings``: the learning rate, batch size, step budget, evaluation interval, patience, clipping and temperature.

    Batches are drawn without replacement, a fresh permutation each pass, from a generator seeded with ``seed``.
    """
    s = settings
    student.to(device)
    opt = torch.optim.Adam(student.parameters(), lr=s.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.max_steps)
    gen = torch.Generator().manual_seed(seed)
    stop = EarlyStop(s.patience, higher_is_better)
    initial = score(student)
    stop.update(0, initial)
    best = copy.deepcopy(student.state_dict())
    order, pos, step = torch.randperm(len(x), generator=gen), 0, 0
    while step < s.max_steps and not stop.done(step):
        if pos >= len(x):
            order, pos = torch.randperm(len(x), generator=gen), 0
        idx = order[pos:pos + s.batch_size]
        pos += s.batch_size
        student.train()
        loss = distillation_loss(student(x[idx].to(device)), targets[idx].to(device), s.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(student.parameters(), s.grad_clip)
        opt.step()
        sched.step()
        step += 1
        if step % s.eval_every == 0 or step == s.max_steps:
            if stop.update(step, score(student)):
                best = copy.deepcopy(student.state_dict())
    return DistillResult({k: v.detach().cpu() for k, v in best.items()}, step, stop.best_step, initial,
                         float(stop.best))


def image_patches(photos: Sequence[np.ndarray], n: int, size: int, seed: int) -> np.ndarray:
    """``n`` random ``size`` x ``size`` crops (uint8 RGB) of the given photographs, at random scales between one and
    four times the crop: inputs that owe nothing to the task, to show how FedDF depends on its distillation data."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        photo = photos[rng.integers(len(photos))]
        side = int(rng.integers(size, min(4 * size, *photo.shape[:2]) + 1))
        top, left = (int(rng.integers(d - side + 1)) for d in photo.shape[:2])
        crop = torch.tensor(photo[top:top + side, left:left + side]).permute(2, 0, 1)[None].float()
        out[i] = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)[0].permute(1, 2, 0).round(
        ).clamp(0, 255).byte().numpy()
    return out
