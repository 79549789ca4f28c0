"""digits-domains: the embedded benchmark, needing no download.

scikit-learn's bundled 1,797 handwritten digits (8x8, 10 classes), upscaled to 32x32 RGB and rendered in six visual
domains. Each source digit is first assigned to exactly one of three splits (server-held public, global test, client
pool) so that no digit leaks across them; it is then rendered in every domain.

Domains (index: name, what changes):
  0 plain     white stroke on black
  1 inverted  black stroke on white
  2 coloured  a coloured stroke on a dark background of another colour
  3 rotated   white on black, rotated by up to +-35 degrees
  4 noisy     white on black with strong Gaussian pixel noise
  5 blurred   white on black, Gaussian blur (sigma 1.5)

The rendering is made once per machine and kept in ``CACHE_DIR`` (about 33 MB): every later process (each client
process, each deployed message) reads it back instead of importing scikit-learn and torchvision to render it again.
"""

from __future__ import annotations

import hashlib
import zipfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedgen.data.images import ImageSet

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DOMAIN_NAMES = ["plain", "inverted", "coloured", "rotated", "noisy", "blurred"]
# Stroke colours of the 'coloured' domain (RGB, 0..1); backgrounds are a dim version of another palette entry.
PALETTE = {
    "red": (0.95, 0.15, 0.1),
    "green": (0.2, 0.85, 0.2),
    "blue": (0.2, 0.4, 1.0),
    "yellow": (0.95, 0.9, 0.1),
    "magenta": (0.9, 0.2, 0.9),
    "cyan": (0.1, 0.9, 0.9),
    "orange": (1.0, 0.55, 0.05),
}
SIZE = 32
MAX_ROTATION_DEG = 35.0
NOISE_STD = 0.3
BLUR_SIGMA = 1.5


def _upscale(digits: np.ndarray) -> torch.Tensor:
    """(N, 8, 8) values 0..16 -> (N, 1, 32, 32) floats in [0, 1]."""
    x = torch.from_numpy(digits.astype(np.float32) / 16.0).unsqueeze(1)
    return F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp(0, 1)


def _rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    rad = torch.deg2rad(degrees)
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def render(stroke: torch.Tensor, domain: int, gen: torch.Generator) -> torch.Tensor:
    """Render strokes (N, 1, H, W) in [0, 1] as RGB (N, 3, H, W) in [0, 1] in one domain."""
    n = stroke.shape[0]
    grey = stroke.expand(-1, 3, -1, -1)
    name = DOMAIN_NAMES[domain]
    if name == "plain":
        out = grey
    elif name == "inverted":
        out = 1.0 - grey
    elif name == "coloured":
        colours = torch.tensor(list(PALETTE.values()))
        fg = colours[torch.randint(len(colours), (n,), generator=gen)]
        shift = torch.randint(1, len(colours), (n,), generator=gen)
        bg = 0.25 * colours[(torch.randint(len(colours), (n,), generator=gen) + shift) % len(colours)]
        out = stroke * fg[:, :, None, None] + (1 - stroke) * bg[:, :, None, None]
    elif name == "rotated":
        angles = (torch.rand(n, generator=gen) * 2 - 1) * MAX_ROTATION_DEG
        out = _rotate(grey.contiguous(), angles)
    elif name == "noisy":
        out = grey + NOISE_STD * torch.randn(grey.shape, generator=gen)
    elif name == "blurred":
        from torchvision.transforms.v2.functional import gaussian_blur

        out = gaussian_blur(grey.contiguous(), kernel_size=[7, 7], sigma=[BLUR_SIGMA, BLUR_SIGMA])
    else:  # pragma: no cover - DOMAIN_NAMES is closed
        raise ValueError(name)
    return out.clamp(0, 1)


def _to_imageset(rgb: torch.Tensor, label: np.ndarray, domain: int) -> ImageSet:
    images = (rgb.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    return ImageSet(images, label.astype(np.int64), np.full(len(label), domain, dtype=np.int64))


def render_all_domains(digits: np.ndarray, labels: np.ndarray, seed: int) -> ImageSet:
    stroke = _upscale(digits)
    parts = []
    for d in range(len(DOMAIN_NAMES)):
        gen = torch.Generator().manual_seed(seed * 1000 + d)
        parts.append(_to_imageset(render(stroke, d, gen), labels, d))
    return ImageSet.concat(parts)


CACHE_DIR = Path("~/.cache/fedgen/datasets")
"""Where the rendered splits are kept, one file per (fractions, split seed), named by a digest that also covers this
module's source and the versions of the libraries that render (a change to either renders again)."""
SPLITS = ("public", "test", "pool")


def _cache_file(public_fraction: float, test_fraction: float, split_seed: int) -> Path:
    key = hashlib.sha256(Path(__file__).read_bytes())
    for part in (public_fraction, test_fraction, split_seed, *(version(p) for p in ("numpy", "scikit-learn", "torch",
                                                                                 "torchvision"))):
        key.update(repr(part).encode())
    return CACHE_DIR.expanduser() / f"digits-domains-{key.hexdigest()[:16]}.npz"


def load_digits_domains(public_fraction: float, test_fraction: float, split_seed: int) -> dict[str, ImageSet]:
    """The three disjoint splits, each rendered in all six domains: 'pool', 'test', 'public' (rendered on first use
    on this machine, then read from ``CACHE_DIR``)."""
    path = _cache_file(public_fraction, test_fraction, split_seed)
    try:
        with np.load(path) as f:  # images kept (N, 3, H, W), as rendered: their (N, H, W, 3) view has the same strides
            return {name: ImageSet(f[f"{name}/images"].transpose(0, 2, 3, 1), f[f"{name}/labels"],
                                   f[f"{name}/domains"]) for name in SPLITS}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):  # not rendered yet on this machine, or damaged
        pass
    splits = render_splits(public_fraction, test_fraction, split_seed)
    # the memory order matters: a model's float batch keeps it (channels-first memory here), and a convolution's
    # result depends on it in the last bits
    arrays = {f"{name}/{field}": getattr(splits[name], field).transpose(0, 3, 1, 2) if field == "images" else
              getattr(splits[name], field) for name in SPLITS for field in ("images", "labels", "domains")}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # np.savez given a path would add '.npz' to the temporary file's name
            np.savez(f, **arrays)

    try:
        from fedgen.results import replace_atomically

        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, write)
    except OSError:  # a read-only home: render in every process, as before the cache
        pass
    return splits


def render_splits(public_fraction: float, test_fraction: float, split_seed: int) -> dict[str, ImageSet]:
    """Split scikit-learn's digits and render each split in every domain (what the cache holds)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    digits, labels = bunch.images, bunch.target
    order = np.random.default_rng(split_seed).permutation(len(labels))
    n_public = round(public_fraction * len(labels))
    n_test = round(test_fraction * len(labels))
    idx = {
        "public": order[:n_public],
        "test": order[n_public : n_public + n_test],
        "pool": order[n_public + n_test :],
    }
    return {
        name: render_all_domains(digits[i], labels[i], seed=split_seed * 10 + k)
        for k, (name, i) in enumerate(idx.items())
    }


def default_splits() -> dict[str, ImageSet]:
    """The three splits under the config's default fractions and split seed."""
    from fedgen.config import DataConfig

    d = DataConfig()
    return load_digits_domains(d.public_fraction, d.test_fraction, d.split_seed)


def default_public_split() -> ImageSet:
    """The server-held public split under the config's default fractions and split seed."""
    return default_splits()["public"]


def save_domain_grid(path: str) -> None:
    """A PNG grid: one row per domain, one column per class (from the server-held public split)."""
    from fedgen.plots import figure

    public = default_public_split()
    size = (len(CLASS_NAMES), len(DOMAIN_NAMES) + 0.4)
    with figure(path, len(DOMAIN_NAMES), len(CLASS_NAMES), figsize=size, dpi=80) as (_, axes):
        for d, row in enumerate(axes):
            for c, ax in enumerate(row):
                i = np.flatnonzero((public.domains == d) & (public.labels == c))[0]
                ax.imshow(public.images[i], interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if d == 0:
                    ax.set_title(CLASS_NAMES[c], fontsize=9)
                if c == 0:
                    ax.set_ylabel(DOMAIN_NAMES[d], fontsize=9)
