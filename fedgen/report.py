"""The comparison report: aggregate run summaries over seeds, write report.md / report.csv and the plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from fedgen.results import plot_lines, read_rounds

COLUMNS = ["final_accuracy", "best_accuracy", "bytes_up", "bytes_down", "wall_seconds"]


def aggregate(summaries: list[dict]) -> dict[str, tuple[float, float]]:
    """Mean and (population) standard deviation of each report column over seeds."""
    out = {}
    for c in COLUMNS:
        vals = np.array([s[c] for s in summaries], dtype=float)
        out[c] = (float(vals.mean()), float(vals.std()))
    return out


def _cell(mean: float, std: float, n: int, fmt: str) -> str:
    return f"{mean:{fmt}} ± {std:{fmt}}" if n > 1 else f"{mean:{fmt}}"


def _mb(x: float) -> float:
    return x / 1e6


def write_report(out_dir: Path, title: str, runs: dict[str, dict[int, Path]], machine: str) -> str:
    """runs: method label -> seed -> run folder (holding summary.json and rounds.jsonl). Returns the Markdown."""
    rows, curves, points = [], {}, {}
    with open(out_dir / "report.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "seed", "status", *COLUMNS])
        for label, by_seed in runs.items():
            summaries = []
            for seed, run_dir in by_seed.items():
                s = json.loads((run_dir / "summary.json").read_text())
                w.writerow([label, seed, s["status"], *[s[c] for c in COLUMNS]])
                summaries.append(s)
            agg = aggregate(summaries)
            rows.append((label, len(summaries), agg))
            per_seed = [read_rounds(d) for d in by_seed.values()]
            n_rows = min(len(r) for r in per_seed)
            curves[label] = (
                [per_seed[0][i]["round"] for i in range(n_rows)],
                [float(np.mean([r[i]["accuracy"] for r in per_seed])) for i in range(n_rows)],
            )
            points[label] = (agg["bytes_up"][0] + agg["bytes_down"][0], agg["final_accuracy"][0])
    lines = [
        f"# {title}",
        "",
        f"Machine: {machine}. Accuracy on the global test split; bytes summed over all clients and rounds"
        + (f"; mean ± std over {rows[0][1]} seeds." if rows and rows[0][1] > 1 else "."),
        "",
        "| method | final accuracy | best accuracy | MB up | MB down | wall time (s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, n, a in rows:
        lines.append(
            f"| {label} | {_cell(*a['final_accuracy'], n, '.4f')} | {_cell(*a['best_accuracy'], n, '.4f')} "
            f"| {_cell(_mb(a['bytes_up'][0]), _mb(a['bytes_up'][1]), n, '.2f')} "
            f"| {_cell(_mb(a['bytes_down'][0]), _mb(a['bytes_down'][1]), n, '.2f')} "
            f"| {_cell(*a['wall_seconds'], n, '.1f')} |"
        )
    md = "\n".join(lines) + "\n"
    (out_dir / "report.md").write_text(md)
    plot_lines(out_dir / "accuracy.png", curves, "round", "accuracy (global test split)", title)
    _plot_bytes(out_dir / "bytes_vs_accuracy.png", points, title)
    return md


def _plot_bytes(path: Path, points: dict[str, tuple[float, float]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (nbytes, acc) in points.items():
        x = max(nbytes, 1.0)  # zero-byte reference runs sit at the left edge of the log axis
        ax.scatter([x], [acc], s=40)
        ax.annotate(label, (x, acc), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set(xlabel="total bytes exchanged (up + down, log; 1 = none)", ylabel="final accuracy", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
