"""Markdown tables, written one way: every report, the regression gate and the audit build theirs here."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def row(cells: Iterable[object]) -> str:
    """One table row: ``| a | b |``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(header: Sequence[object], rows: Iterable[Iterable[object]]) -> list[str]:
    """The header, the separator and the rows, one line each."""
    return [row(header), row(["---"] * len(header)), *(row(r) for r in rows)]
