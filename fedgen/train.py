"""Local training and evaluation of classifiers, with the regularisers of FedProx and FedDyn."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

from fedgen.config import TrainConfig
from fedgen.data.images import ImageSet

Penalty = Callable[[nn.Module], torch.Tensor]


def resolve_device(name: str, deterministic: bool = False) -> torch.device:
    """The device a run's config names; the process's algorithms set as ``deterministic`` says
    (:func:`set_deterministic`)."""
    set_deterministic(deterministic)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def set_deterministic(on: bool) -> None:
    """With ``on``, torch runs deterministic algorithms only (an operation that has none raises, naming itself),
    cuBLAS a fixed workspace and cuDNN without benchmarking, so that a run on a GPU repeats, and resumes, exactly
    (the config's ``deterministic``); off, torch's defaults. On the CPU every seeded run repeats either way."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: set before any GPU work
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False


def proximal_penalty(global_params: list[torch.Tensor], mu: float) -> Penalty:
    """FedProx: (mu / 2) * ||w - w_global||^2 over the trainable parameters."""

    def penalty(model: nn.Module) -> torch.Tensor:
        return (mu / 2) * sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params, strict=True))

    return penalty


SEED_STRIDE, ROUND_STRIDE = 100_003, 1_009
"""How client_seed spaces the seeds of runs and of rounds."""


def client_seed(seed: int, server_round: int, client: int) -> int:
    """The seed of one client's local training in one round (distinct per client and round)."""
    return seed * SEED_STRIDE + server_round * ROUND_STRIDE + client


def randomness(seed: int, init_seed: int | None, split_seed: int) -> dict:
    """What each random draw of a run depends on, for its summary: rerunning with these values repeats it."""
    return {
        "seed": seed,
        "initial_model": f"torch.manual_seed({seed if init_seed is None else init_seed})"
                         + (" (init_seed)" if init_seed is not None else ", before anything else is drawn"),
        "benchmark_splits": f"data.split_seed {split_seed} (public / global test / client pool, fixed across runs)",
        "partition": f"data.partition drawn with seed {seed} (flwr-datasets partitioners, long-tail subsampling)",
        "client_test_split": f"numpy default_rng({seed} + partition id)",
        "client_training": f"torch Generator per client and round: {seed} * {SEED_STRIDE} + round * {ROUND_STRIDE} "
                           "+ partition id",
        "server": f"random, numpy and torch seeded with {seed} "
                  + ("after the initial model" if init_seed is not None else "once, the initial model their first draw")
                  + " (client sampling, server-side generation and training)",
    }


@dataclass
class TrainResult:
    loss: float
    num_examples: int
    steps: int
    lr_sum: float = 0.0
    """How far one unit of constant gradient moved the weights over the steps (SCAFFOLD's K * lr): the sum of the
    steps' learning rates; with SGD momentum beta, step k moves lr * (1 - beta^k) / (1 - beta)."""


def loader(data: ImageSet, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    """Batches made float as they are drawn (the set stays uint8), in the order a shuffling DataLoader with this
    seed gives."""
    gen = torch.Generator().manual_seed(seed)
    order = RandomSampler(range(len(data)), generator=gen) if shuffle else SequentialSampler(range(len(data)))
    return DataLoader(data.batches(), sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None,
                      generator=gen)


def fit(
    model: nn.Module,
    data: ImageSet,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    device: torch.device,
    seed: int,
    penalties: list[Penalty] = (),
    step_size: int | None = None,
    gamma: float = 0.1,
    cosine: bool = False,
) -> TrainResult:
    """Cross-entropy SGD plus any penalty terms; with ``step_size``, the learning rate is multiplied by ``gamma``
    every ``step_size`` epochs (StepLR); with ``cosine``, it is annealed to 0 over the epochs (CosineAnnealingLR)."""
    if len(data) == 0:
        raise ValueError("cannot train on an empty dataset")
    # the only randomness is the shuffle, drawn from the loader's own generator: the process-wide RNG is left alone
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size, gamma) if step_size else None
    if cosine:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    total, seen, steps, lr_sum = 0.0, 0, 0, 0.0
    for epoch in range(epochs):
        for x, y in loader(data, batch_size, shuffle=True, seed=seed + epoch):
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            total += loss.item() * len(y)
            seen += len(y)
            for pen in penalties:
                loss = loss + pen(model)
            loss.backward()
            opt.step()
            steps += 1
            lr = opt.param_groups[0]["lr"]
            lr_sum += lr * (1 - momentum**steps) / (1 - momentum) if momentum else lr
        if sched is not None:
            sched.step()
    return TrainResult(loss=total / seen, num_examples=len(data), steps=steps, lr_sum=lr_sum)


def train(
    model: nn.Module,
    data: ImageSet,
    cfg: TrainConfig,
    device: torch.device,
    seed: int,
    penalties: list[Penalty] = (),
) -> TrainResult:
    """Local training as the config's ``train`` section says (``local_epochs`` passes)."""
    return fit(
        model, data, epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, device=device, seed=seed, penalties=penalties,
    )


@torch.no_grad()
def predict(model: nn.Module, data: ImageSet, batch_size: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(per-example cross-entropy loss, predicted class) of ``model`` on ``data``."""
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    model.to(device).eval()
    losses, preds = [], []
    for x, y in loader(data, batch_size, shuffle=False, seed=0):
        logits = model(x.to(device))
        losses.append(nn.functional.cross_entropy(logits, y.to(device), reduction="none").cpu())
        preds.append(logits.argmax(1).cpu())
    return torch.cat(losses).numpy(), torch.cat(preds).numpy()


@dataclass(frozen=True)
class Scores:
    """A model's mean cross-entropy loss and accuracy on a dataset, and its correct / total counts per domain id and
    per class."""

    loss: float
    accuracy: float
    domain_correct: np.ndarray
    domain_total: np.ndarray
    class_correct: np.ndarray
    class_total: np.ndarray


def _counts(ids: np.ndarray, right: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.bincount(ids, weights=right, minlength=n).astype(np.int64), np.bincount(ids, minlength=n)


def evaluate(model: nn.Module, data: ImageSet, batch_size: int, device: torch.device, num_domains: int,
             num_classes: int = 0) -> Scores:
    losses, preds = predict(model, data, batch_size, device)
    right = preds == data.labels
    return Scores(float(losses.mean()), float(right.mean()), *_counts(data.domains, right, num_domains),
                  *_counts(data.labels, right, num_classes))


def domain_accuracy(domain_names: list[str], correct, total) -> dict[str, float]:
    """Accuracy per domain name, for the domains that have examples (counts may be summed over clients)."""
    return {d: float(c / t) for d, c, t in zip(domain_names, correct, total, strict=True) if t > 0}
