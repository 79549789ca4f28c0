"""The regression gate: a comparison's new report.csv against a stored one, method by method.

A method regresses when its mean final headline score (accuracy up, FID down) is worse than the stored one by more
than the tolerance, and, with several seeds, by more than the larger of the two reports' standard deviations over
seeds; when its bytes (up + down, summed over the run) grow by more than ``bytes_tolerance`` (relative); when any of
its runs, in either report, did not finish or has no final score (NaN or empty: it compares false with any bound); or
when it is missing from the new report. Wall time is compared for the reader and gated only when ``time_tolerance``
(relative) is given: it varies with the machine.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedgen.config import ConfigError
from fedgen.markdown import table as markdown_table

TOLERANCE = 0.02
"""How much worse the mean final headline score may get, in the metric's own units (two accuracy points)."""
BYTES_TOLERANCE = 0.01
"""Relative growth of the bytes moved."""


@dataclass
class Report:
    metric: str
    higher_is_better: bool
    runs: dict[str, list[dict]]
    """method -> one row per seed (final, bytes, wall time, status)."""


@dataclass
class MethodDiff:
    method: str
    old: dict | None
    new: dict | None
    regressions: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.regressions:
            return "REGRESSED: " + "; ".join(self.regressions)
        if self.old is None:
            return "new"
        return "ok"


def read_report(path: str | Path) -> Report:
    """A report.csv as :func:`fedgen.report.write_report` writes it; a missing or foreign file is a
    :class:`ConfigError` (bad input, reported before any run)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no report at {path}")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ConfigError(f"{path} holds no runs")
    missing = {"method", "seed", "status", "metric", "higher_is_better", "final", "bytes_up", "bytes_down",
               "wall_seconds"} - set(rows[0])
    if missing:
        raise ConfigError(f"{path} is not a fedgen report.csv (no column {', '.join(sorted(missing))}); a report "
                         f"written before the gate existed must be regenerated")
    metrics = {(r["metric"], r["higher_is_better"]) for r in rows}
    if len(metrics) != 1:
        raise ConfigError(f"{path} mixes metrics: {sorted(metrics)}")
    metric, higher = metrics.pop()
    runs: dict[str, list[dict]] = {}
    for r in rows:
        runs.setdefault(r["method"], []).append({
            "seed": int(r["seed"]), "status": r["status"], "final": _number(r["final"]),
            "bytes": float(r["bytes_up"]) + float(r["bytes_down"]), "wall": float(r["wall_seconds"]),
        })
    return Report(metric, higher == "True", runs)


def _number(cell: str) -> float:
    """A score cell; a run that ended without one (a failed run writes None) reads as NaN."""
    try:
        return float(cell)
    except ValueError:
        return math.nan


def _summary(rows: list[dict]) -> dict:
    finals = np.array([r["final"] for r in rows])
    return {"n": len(rows), "final": float(finals.mean()), "std": float(finals.std()),
            "bytes": float(np.mean([r["bytes"] for r in rows])), "wall": float(np.mean([r["wall"] for r in rows])),
            "failed": [r["seed"] for r in rows if r["status"] != "finished"],
            "unscored": [r["seed"] for r in rows if math.isnan(r["final"])]}


def _faults(s: dict, metric: str, whose: str) -> list[str]:
    """A method's faults within one report: seeds that did not finish, or ended without a final score."""
    return ([f"{whose}seed(s) {s['failed']} did not finish"] if s["failed"] else []) + \
        ([f"{whose}no final {metric} for seed(s) {s['unscored']}"] if s["unscored"] else [])


def diff(old: Report, new: Report, tolerance: float = TOLERANCE, bytes_tolerance: float = BYTES_TOLERANCE,
         time_tolerance: float | None = None) -> list[MethodDiff]:
    """Every method of either report, in the new report's order (then those only the old one has)."""
    if (old.metric, old.higher_is_better) != (new.metric, new.higher_is_better):
        raise ConfigError(f"the reports score by different metrics: stored {old.metric}, new {new.metric}")
    out = []
    for method in [*new.runs, *(m for m in old.runs if m not in new.runs)]:
        o = _summary(old.runs[method]) if method in old.runs else None
        n = _summary(new.runs[method]) if method in new.runs else None
        d = MethodDiff(method, o, n)
        if n is None:
            d.regressions.append("missing from the new report")
        else:
            d.regressions += _faults(n, new.metric, "")
        if o is not None:
            d.regressions += _faults(o, old.metric, "baseline: ")
        if o is not None and n is not None:
            worse = (o["final"] - n["final"]) if new.higher_is_better else (n["final"] - o["final"])
            allowed = max(tolerance, o["std"], n["std"])
            if not (o["unscored"] or n["unscored"]) and worse > allowed:
                d.regressions.append(f"{new.metric} {n['final'] - o['final']:+.4f} (allowed {allowed:.4f})")
            if n["bytes"] > o["bytes"] * (1 + bytes_tolerance):
                d.regressions.append(f"bytes {_pct(n['bytes'], o['bytes'])}")
            if time_tolerance is not None and n["wall"] > o["wall"] * (1 + time_tolerance):
                d.regressions.append(f"wall time {100 * (n['wall'] / o['wall'] - 1):+.0f}%")
        out.append(d)
    return out


def _pct(new: float, old: float) -> str:
    if old:
        return f"{100 * (new / old - 1):+.1f}%"
    return "0" if new == old else f"0 -> {new / 1e6:.2f} MB"


def markdown(diffs: list[MethodDiff], old: Report, baseline: str, tolerance: float) -> str:
    better = "higher" if old.higher_is_better else "lower"
    lines = [
        f"## Against the baseline {baseline}",
        "",
        f"Final {old.metric} ({better} is better), mean over seeds; tolerance {tolerance:g} (or the seeds' spread, "
        f"if larger); bytes up + down over the run.",
        "",
    ]
    rows = []
    for d in diffs:
        o, n = d.old, d.new

        def cell(s: dict | None, key: str, fmt: str, scale: float = 1.0) -> str:
            if s is None:
                return "-"
            spread = f" ± {s['std'] * scale:{fmt}}" if key == "final" and s["n"] > 1 else ""
            return f"{s[key] * scale:{fmt}}{spread}"

        both = o is not None and n is not None
        delta = f"{n['final'] - o['final']:+.4f}" if both else "-"
        bytes_delta = _pct(n["bytes"], o["bytes"]) if both else "-"
        wall_delta = _pct(n["wall"], o["wall"]) if both else "-"
        verdict = f"**{d.verdict}**" if d.regressions else d.verdict
        rows.append([d.method, cell(o, "final", ".4f"), cell(n, "final", ".4f"), delta, cell(o, "bytes", ".2f", 1e-6),
                     cell(n, "bytes", ".2f", 1e-6), bytes_delta, cell(o, "wall", ".1f"), cell(n, "wall", ".1f"),
                     wall_delta, verdict])
    lines += markdown_table([
        "method", f"stored {old.metric}", f"new {old.metric}", "delta", "MB stored", "MB new", "bytes delta",
        "wall stored (s)", "wall new (s)", "wall delta", "verdict"], rows)
    bad = [d.method for d in diffs if d.regressions]
    lines += ["", f"**{len(bad)} regression(s): {', '.join(bad)}.**" if bad else "No regression."]
    return "\n".join(lines) + "\n"


def gate(old_path: str | Path, new_path: str | Path, out: str | Path, tolerance: float = TOLERANCE,
         bytes_tolerance: float = BYTES_TOLERANCE, time_tolerance: float | None = None) -> tuple[bool, str]:
    """Diff two report.csv files, write the Markdown to ``out``; returns (passed, Markdown)."""
    old, new = read_report(old_path), read_report(new_path)
    diffs = diff(old, new, tolerance, bytes_tolerance, time_tolerance)
    md = markdown(diffs, old, str(old_path), tolerance)
    Path(out).write_text(md)
    return not any(d.regressions for d in diffs), md
