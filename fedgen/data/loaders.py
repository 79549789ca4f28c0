"""Loaders for real datasets: CIFAR-10/100 (torchvision), Hugging Face image datasets, image folders.

Each returns the same three splits as the embedded benchmark: 'pool' (partitioned among clients), 'test' (the
global test split) and 'public' (server-held, never seen by a client).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from fedgen.data.images import ImageSet

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def _to_rgb_array(img: Image.Image, size: int) -> np.ndarray:
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _carve(data: ImageSet, fractions: dict[str, float], seed: int) -> dict[str, ImageSet]:
    """Split off named random fractions; the remainder becomes 'pool'."""
    order = np.random.default_rng(seed).permutation(len(data))
    out, start = {}, 0
    for name, frac in fractions.items():
        n = round(frac * len(data))
        out[name] = data.subset(order[start : start + n])
        start += n
    out["pool"] = data.subset(order[start:])
    return out


def load_cifar(name: str, root: str | None, download: bool, public_fraction: float, seed: int):
    """CIFAR-10 or CIFAR-100 through torchvision; returns (splits, class names)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    root = root or "~/.cache/fedgen/datasets"
    try:
        train = cls(root=str(Path(root).expanduser()), train=True, download=download)
        test = cls(root=str(Path(root).expanduser()), train=False, download=download)
    except (RuntimeError, OSError) as err:
        raise FileNotFoundError(
            f"{name} not found under data.path={root!r} ({err}); set data.download=true on a machine with internet"
        ) from None

    def as_set(ds) -> ImageSet:
        labels = np.asarray(ds.targets, dtype=np.int64)
        return ImageSet(np.asarray(ds.data, dtype=np.uint8), labels, np.zeros(len(labels), dtype=np.int64))

    splits = _carve(as_set(train), {"public": public_fraction}, seed)
    splits["test"] = as_set(test)
    return splits, list(train.classes)


def load_huggingface(
    path: str,
    image_key: str,
    label_key: str,
    size: int,
    public_fraction: float,
    test_fraction: float,
    seed: int,
):
    """Any Hugging Face image-classification dataset: a hub id, or a local directory that `load_dataset` reads.

    Uses the dataset's 'test' split as the global test split when it has one; otherwise carves one out.
    Returns (splits, class names).
    """
    import datasets

    try:
        dd = datasets.load_dataset(path)
    except Exception as err:  # noqa: BLE001 - datasets raises many types for a missing / unreachable source
        raise FileNotFoundError(f"cannot load Hugging Face dataset data.path={path!r}: {err}") from None
    train_name = "train" if "train" in dd else next(iter(dd))
    train = dd[train_name]
    for key in (image_key, label_key):
        if key not in train.column_names:
            raise ValueError(
                f"Hugging Face dataset {path!r} has no column {key!r} (data.image_key / data.label_key); "
                f"columns: {train.column_names}"
            )
    feature = train.features[label_key]
    names = list(feature.names) if hasattr(feature, "names") else [str(c) for c in sorted(set(train[label_key]))]

    def as_set(ds) -> ImageSet:
        images = np.stack([_to_rgb_array(img, size) for img in ds[image_key]])
        labels = np.asarray(ds[label_key], dtype=np.int64)
        return ImageSet(images, labels, np.zeros(len(labels), dtype=np.int64))

    if "test" in dd and train_name != "test":
        splits = _carve(as_set(train), {"public": public_fraction}, seed)
        splits["test"] = as_set(dd["test"])
    else:
        splits = _carve(as_set(train), {"public": public_fraction, "test": test_fraction}, seed)
    return splits, names


def load_image_folder(root: str, size: int, public_fraction: float, test_fraction: float, seed: int):
    """A folder laid out as ``root/<domain>/<class>/<image>`` (DomainNet, NICO++ style).

    Returns (splits, class names, domain names); domains and classes are sorted by name.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"image folder data.path={root!r} does not exist or is not a directory")
    domains = sorted(p.name for p in base.iterdir() if p.is_dir())
    classes = sorted({c.name for d in domains for c in (base / d).iterdir() if c.is_dir()})
    if not domains or not classes:
        raise ValueError(f"image folder {root!r} must be laid out as <domain>/<class>/<image>")
    images, labels, doms = [], [], []
    for di, d in enumerate(domains):
        for ci, c in enumerate(classes):
            folder = base / d / c
            if not folder.is_dir():
                continue
            for f in sorted(folder.iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    with Image.open(f) as img:
                        images.append(_to_rgb_array(img, size))
                    labels.append(ci)
                    doms.append(di)
    if not images:
        raise ValueError(f"image folder {root!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    data = ImageSet(np.stack(images), np.asarray(labels, dtype=np.int64), np.asarray(doms, dtype=np.int64))
    return _carve(data, {"public": public_fraction, "test": test_fraction}, seed), classes, domains
