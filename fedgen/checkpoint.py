"""Checkpoints of a run after each completed round: enough to continue it exactly (RNG included)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedgen.results import replace_atomically

CHECKPOINT = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            raise RuntimeError(f"the checkpoint holds the RNG of {len(state['cuda'])} CUDA devices, this machine has "
                               f"{torch.cuda.device_count()}: resume on the same devices to continue exactly")
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file, synced, then renamed: an interruption leaves the previous file intact."""
    replace_atomically(path, lambda tmp: torch.save(obj, tmp))


def save(run_dir: str | Path, state: dict[str, Any]) -> None:
    save_atomic(state, Path(run_dir) / CHECKPOINT)


def load(run_dir: str | Path) -> dict[str, Any]:
    """The checkpoint, read as tensors and plain data only (torch's weights-only unpickler) with the numpy types of
    :func:`rng_state`'s numpy state: a file that would build anything else, and so could run code, is refused."""
    import pickle

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct

    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} holds no {CHECKPOINT}: it is not a run folder, or no round completed")
    rng_globals = [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]  # numpy's RNG state: uint32 array
    try:
        with torch.serialization.safe_globals(rng_globals):
            return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as err:
        paragraphs = [p.strip() for p in str(err).split("\n\n") if p.strip()]  # torch's advice, its reason, a link
        reason = paragraphs[-2] if len(paragraphs) > 2 else str(err)
        raise ValueError(f"{path} holds more than tensors and plain data: refused, as unpickling it could run code "
                         f"({reason})") from None
