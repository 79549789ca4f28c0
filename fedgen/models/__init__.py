"""Classifiers by name.

``cnn``: a small CNN (two conv blocks, two linear layers) for 32x32 inputs, about 0.3M parameters.
``resnet18``: torchvision's ResNet-18 with a small-image stem (3x3 conv, stride 1, no max-pool), 11.2M parameters.
``norm='group'`` swaps BatchNorm for GroupNorm, the form DP-SGD (opacus) accepts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision.models import resnet18

GROUPS = 8


def _norm(kind: str) -> Callable[[int], nn.Module]:
    if kind == "batch":
        return nn.BatchNorm2d
    if kind == "group":
        return lambda c: nn.GroupNorm(min(GROUPS, c), c)
    raise ValueError(f"model.norm must be 'batch' or 'group', got {kind!r}")


class SmallCNN(nn.Module):
    representation = "classifier.2"
    """The penultimate layer (64 features after the hidden layer's ReLU): MOON's representation."""

    def __init__(self, num_classes: int, norm: str = "batch", image_size: int = 32) -> None:
        super().__init__()
        self.image_size = image_size
        make_norm = _norm(norm)
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), make_norm(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), make_norm(64), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = 64 * (image_size // 4) ** 2
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def small_image_resnet18(num_classes: int, norm: str = "batch") -> nn.Module:
    model = resnet18(weights=None, num_classes=num_classes, norm_layer=_norm(norm))
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.representation = "avgpool"  # the penultimate layer (512 pooled features): MOON's representation
    return model


MODELS = ("cnn", "resnet18")


def build_model(name: str, num_classes: int, norm: str = "batch", image_size: int = 32) -> nn.Module:
    if name == "cnn":
        return SmallCNN(num_classes, norm, image_size)
    if name == "resnet18":
        return small_image_resnet18(num_classes, norm)
    raise ValueError(f"unknown model.name {name!r}; choose one of {', '.join(MODELS)}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
