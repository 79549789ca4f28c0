"""Local training and evaluation of classifiers, with the regularisers of FedProx and FedDyn."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from fedgen.config import TrainConfig
from fedgen.data.images import ImageSet

Penalty = Callable[[nn.Module], torch.Tensor]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def proximal_penalty(global_params: list[torch.Tensor], mu: float) -> Penalty:
    """FedProx: (mu / 2) * ||w - w_global||^2 over the trainable parameters."""

    def penalty(model: nn.Module) -> torch.Tensor:
        return (mu / 2) * sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params, strict=True))

    return penalty


def client_seed(seed: int, server_round: int, client: int) -> int:
    """The seed of one client's local training in one round (distinct per client and round)."""
    return seed * 100_003 + server_round * 1_009 + client


@dataclass
class TrainResult:
    loss: float
    num_examples: int
    steps: int


def _loader(data: ImageSet, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(data.torch_dataset(), batch_size=batch_size, shuffle=shuffle, generator=gen)


def train(
    model: nn.Module,
    data: ImageSet,
    cfg: TrainConfig,
    device: torch.device,
    seed: int,
    penalties: list[Penalty] = (),
    epochs: int | None = None,
) -> TrainResult:
    """Cross-entropy SGD for ``epochs`` (default ``cfg.local_epochs``), plus any penalty terms."""
    if len(data) == 0:
        raise ValueError("cannot train on an empty dataset")
    torch.manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    total, seen, steps = 0.0, 0, 0
    for epoch in range(epochs or cfg.local_epochs):
        for x, y in _loader(data, cfg.batch_size, shuffle=True, seed=seed + epoch):
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
    return TrainResult(loss=total / seen, num_examples=len(data), steps=steps)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageSet, batch_size: int, device: torch.device) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of ``model`` on ``data``."""
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    model.to(device).eval()
    loss_sum, correct = 0.0, 0
    for x, y in _loader(data, batch_size, shuffle=False, seed=0):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return loss_sum / len(data), correct / len(data)
