"""In-memory labelled image sets, the common currency of every loader."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` images as float ``(N, 3, H, W)`` in [-1, 1], what the models take."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 ``(N, H, W, 3)`` with integer labels and domain ids."""

    images: np.ndarray
    labels: np.ndarray
    domains: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}")
        if len(self.labels) != n or len(self.domains) != n:
            raise ValueError("images, labels and domains differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> ImageSet:
        idx = np.asarray(idx, dtype=np.int64)
        return ImageSet(self.images[idx], self.labels[idx], self.domains[idx])

    @staticmethod
    def concat(parts: list[ImageSet]) -> ImageSet:
        return ImageSet(
            np.concatenate([p.images for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.domains for p in parts]),
        )

    def tensors(self, idx: np.ndarray | list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (all, or those at ``idx``) as float ``(N, 3, H, W)`` in [-1, 1], labels as int64."""
        images, labels = (self.images, self.labels) if idx is None else (self.images[idx], self.labels[idx])
        return to_float(images), torch.from_numpy(labels.astype(np.int64))

    def batches(self) -> Dataset:
        """A dataset indexed by lists of indices: each batch is made float when it is drawn, so a large set stays
        uint8 in memory (a DataLoader with a BatchSampler and ``batch_size=None`` draws from it)."""
        return _Batches(self)

    def label_histogram(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=num_classes)


class _Batches(Dataset):
    def __init__(self, data: ImageSet) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.tensors(np.asarray(idx, dtype=np.int64))
