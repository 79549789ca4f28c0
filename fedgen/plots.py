"""Figures, drawn one way: a headless matplotlib figure saved to a PNG and closed (:func:`figure`), and the plots
reports share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def figure(path: str | Path, nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] = (6, 4),
           dpi: int = 110, squeeze: bool = True) -> Iterator[tuple[Any, Any]]:
    """``(fig, axes)`` to draw on; on leaving, laid out tightly and saved to ``path`` (headless: Agg); always
    closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=squeeze)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
