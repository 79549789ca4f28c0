"""Classifiers by name.

``cnn``: a small CNN (two conv blocks, two linear layers) for 32x32 inputs, about 0.3M parameters.
``resnet18``: torchvision's ResNet-18 with a small-image stem (3x3 conv, stride 1, no max-pool), 11.2M parameters.
``resnet8``: the CIFAR ResNet-8 of FedDF's paper (three stages of one basic block, 16/32/64 channels), 78k parameters.
``mobilenet``: torchvision's MobileNetV2 at width 0.5 (another family: inverted residuals, depthwise convolutions),
0.7M parameters; its ImageNet strides take 32x32 inputs down to 1x1, which keeps it as cheap as the CNN on a CPU.
``norm='group'`` swaps BatchNorm for GroupNorm, the form DP-SGD (opacus) accepts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

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
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes, norm_layer=_norm(norm))
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.representation = "avgpool"  # the penultimate layer (512 pooled features): MOON's representation
    return model


class ResNet8(nn.Module):
    """He et al.'s CIFAR ResNet with one basic block per stage (6n + 2 layers, n = 1): FedDF's ResNet-8."""

    representation = "pool"

    def __init__(self, num_classes: int, norm: str = "batch") -> None:
        from torchvision.models.resnet import BasicBlock

        super().__init__()
        make_norm = _norm(norm)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), make_norm(16), nn.ReLU())
        blocks, width = [], 16
        for out, stride in ((16, 1), (32, 2), (64, 2)):
            down = None
            if stride != 1 or width != out:
                down = nn.Sequential(nn.Conv2d(width, out, 1, stride=stride, bias=False), make_norm(out))
            blocks.append(BasicBlock(width, out, stride, down, norm_layer=make_norm))
            width = out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))))


def mobilenet(num_classes: int, norm: str = "batch") -> nn.Module:
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2(weights=None, num_classes=num_classes, width_mult=0.5, norm_layer=_norm(norm))
    model.representation = "features"
    return model


MODELS = {
    "cnn": lambda classes, norm, size: SmallCNN(classes, norm, size),
    "resnet18": lambda classes, norm, size: small_image_resnet18(classes, norm),
    "resnet8": lambda classes, norm, size: ResNet8(classes, norm),
    "mobilenet": lambda classes, norm, size: mobilenet(classes, norm),
}
"""Name -> builder (num_classes, norm, image_size); ``fedgen.config.ModelName`` lists the same names."""


def build_model(name: str, num_classes: int, norm: str = "batch", image_size: int = 32) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model.name {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](num_classes, norm, image_size)


def classifier(cfg, fed, name: str | None = None) -> nn.Module:
    """A run's classifier for its data (``cfg``: an ExperimentConfig, ``fed``: its Federation), of architecture
    ``name`` where clients train different ones (FedDF), else ``model.name``: the one call every builder makes."""
    return build_model(name or cfg.model.name, fed.num_classes, cfg.model.norm, fed.image_shape[-1])
