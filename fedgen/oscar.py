"""OSCAR's plain functions: per-class category encodings, their wire format and its validation.

A client's upload is one array, 'encodings' (classes, sequence, hidden): for each class it holds, the mean of the
token-level text encodings of that class's captions; metric 'class-ids' says which classes. Nothing else the
algorithm does not use leaves the client (not how many captions each class had, nor the client's example count).
(One array rather than one per class: each array carries its own serialisation header.)
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict

RECORD = "encodings"
"""The reply's ArrayRecord holding the upload."""
KEY = "encodings"
"""The one array in it: (classes, sequence, hidden)."""


def class_means(encodings: torch.Tensor, labels: np.ndarray) -> dict[int, tuple[torch.Tensor, int]]:
    """Mean encoding and count per class present: {c: (mean over the class's (seq, hidden) encodings, n_c)}."""
    if len(encodings) != len(labels):
        raise ValueError(f"{len(encodings)} encodings for {len(labels)} labels")
    out = {}
    for c in np.unique(labels):
        idx = torch.from_numpy(np.flatnonzero(labels == c))
        out[int(c)] = (encodings[idx].mean(0), len(idx))
    return out


def to_record(means: dict[int, tuple[torch.Tensor, int]], dtype: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(arrays, metrics) of an upload, the encodings cast to ``dtype`` ('float16' or 'float32')."""
    classes = sorted(means)
    stacked = torch.stack([means[c][0] for c in classes]).to(getattr(torch, dtype)).contiguous()
    return {KEY: stacked}, {"class-ids": classes}


def reply_content(
    means: dict[int, tuple[torch.Tensor, int]], dtype: str, caption_seconds: float, encode_seconds: float,
) -> RecordDict:
    """A client's whole reply: the upload plus its timings."""
    arrays, meta = to_record(means, dtype)
    metrics = {**meta, "caption-seconds": caption_seconds, "encode-seconds": encode_seconds}
    return RecordDict({RECORD: ArrayRecord(arrays), "metrics": MetricRecord(metrics)})


def check_upload(arrays: dict[str, np.ndarray], class_ids: list, shape: tuple[int, int], num_classes: int,
                 dtype: str) -> list[str]:
    """Problems with an upload: class ids that are not whole numbers, out of range or repeated, encodings missing,
    of another dtype than ``dtype`` or of another shape than (classes, *the generator's text-encoding shape*)."""
    problems = [f"class id {v!r} is not a whole number" for v in class_ids
                if isinstance(v, bool) or not float(v).is_integer()]
    if problems:
        return problems
    if len(set(class_ids)) != len(class_ids):
        problems.append("repeated class ids")
    problems += [f"class id {c} outside 0..{num_classes - 1}" for c in class_ids if not 0 <= int(c) < num_classes]
    if set(arrays) != {KEY}:
        return [*problems, f"expected one array '{KEY}', got {sorted(arrays)}"]
    if arrays[KEY].dtype != np.dtype(dtype):
        problems.append(f"'{KEY}' is {arrays[KEY].dtype}, expected {dtype}")
    expected = (len(class_ids), *shape)
    if tuple(arrays[KEY].shape) != expected:
        problems.append(f"'{KEY}' has shape {list(arrays[KEY].shape)}, expected {list(expected)}")
    return problems


def stack(uploads: list[tuple[dict[str, np.ndarray], list[int]]]) -> tuple[torch.Tensor, np.ndarray]:
    """All (client, class) encodings as one float32 (K, seq, hidden) tensor, with their class indices.

    ``uploads``: (arrays, class ids) per client.
    """
    encodings = torch.cat([torch.from_numpy(np.asarray(a[KEY], dtype=np.float32)) for a, _ in uploads])
    classes = np.concatenate([np.asarray(c, dtype=np.int64) for _, c in uploads])
    return encodings, classes
