"""The results contract of a run folder.

config.yaml     the resolved experiment config
rounds.jsonl    one JSON object per round (round, accuracy, loss, bytes_up, bytes_down, seconds, and any extras)
rounds.csv      the same rows, contract columns only
bytes.csv       every ledger entry: round, client, direction, tier, kind, bytes
summary.json    strategy, dataset, partition, num_clients, rounds, seed, final_accuracy, best_accuracy, bytes_up,
                bytes_down, wall_seconds, status ('running' / 'finished' / 'failed'), and extras
accuracy.png    accuracy on the global test split per round
Rows are flushed as they come and the summary is rewritten each round, so an interrupted run keeps what it had.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from fedgen.comm import UP, ByteLedger
from fedgen.config import ExperimentConfig, dump_yaml
from fedgen.data.images import ImageSet

ROUND_COLUMNS = ["round", "accuracy", "loss", "bytes_up", "bytes_down", "seconds"]
SUMMARY_KEYS = [
    "strategy", "dataset", "partition", "num_clients", "rounds", "seed", "final_accuracy", "best_accuracy",
    "bytes_up", "bytes_down", "wall_seconds", "status",
]


def plot_lines(path: Path, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_image_grid(path: Path, images: ImageSet, class_names: list[str], per_class: int = 8) -> None:
    """A PNG grid of the first ``per_class`` images of each class present (one row per class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = [int(c) for c in np.unique(images.labels)]
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.8, len(classes) * 0.85), squeeze=False)
    for row, c in zip(axes, classes, strict=True):
        idx = np.flatnonzero(images.labels == c)[:per_class]
        for j, ax in enumerate(row):
            ax.axis("off")
            if j < len(idx):
                ax.imshow(images.images[idx[j]], interpolation="nearest")
        row[0].set_title(class_names[c], fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def read_rounds(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "rounds.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class RunRecorder:
    """Writes one run's folder as rounds complete."""

    def __init__(
        self, out_dir: str | Path, cfg: ExperimentConfig, ledger: ByteLedger, rows: list[dict] = (),
        elapsed: float = 0.0,
    ) -> None:
        """Start a run folder; a resumed run passes the rows and seconds it already had."""
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        self.ledger = ledger
        self.rows: list[dict[str, Any]] = list(rows)
        self.extras: dict[str, Any] = {}
        self._t0 = time.perf_counter() - elapsed
        self._last = time.perf_counter()
        (self.dir / "config.yaml").write_text(dump_yaml(cfg))
        with open(self.dir / "rounds.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.rows)
        with open(self.dir / "rounds.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(ROUND_COLUMNS)
            w.writerows([r[c] for c in ROUND_COLUMNS] for r in self.rows)
        self._write_summary("running")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def record_round(self, rnd: int, accuracy: float, loss: float, **extra: Any) -> dict[str, Any]:
        """Append one round's row (bytes of that round from the ledger) and flush it to disk."""
        now = time.perf_counter()
        row = {
            "round": rnd,
            "accuracy": float(accuracy),
            "loss": float(loss),
            "bytes_up": self.ledger.total(UP, round=rnd),
            "bytes_down": self.ledger.total("down", round=rnd),
            "seconds": round(now - self._last, 3),
            **extra,
        }
        self._last = now
        self.rows.append(row)
        with open(self.dir / "rounds.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.dir / "rounds.csv", "a", newline="") as f:
            csv.writer(f).writerow([row[c] for c in ROUND_COLUMNS])
        self._write_summary("running")
        return row

    def summary(self, status: str) -> dict[str, Any]:
        trained = [r for r in self.rows if r["round"] > 0] or self.rows
        accs = [r["accuracy"] for r in trained]
        return {
            "strategy": self.cfg.strategy.name,
            "dataset": self.cfg.data.dataset,
            "partition": self.cfg.data.partition.kind,
            "num_clients": self.cfg.data.num_clients,
            "rounds": max((r["round"] for r in self.rows), default=0),
            "seed": self.cfg.seed,
            "final_accuracy": accs[-1] if accs else None,
            "best_accuracy": max(accs) if accs else None,
            "bytes_up": self.ledger.total(UP),
            "bytes_down": self.ledger.total("down"),
            "wall_seconds": round(self.elapsed, 3),
            "status": status,
            **self.extras,
        }

    def _write_summary(self, status: str) -> dict[str, Any]:
        summary = self.summary(status)
        tmp = self.dir / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(self.dir / "summary.json")
        return summary

    def finish(self, status: str = "finished") -> dict[str, Any]:
        with open(self.dir / "bytes.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["round", "client", "direction", "tier", "kind", "bytes"])
            w.writeheader()
            w.writerows(asdict(e) for e in self.ledger.entries)
        if self.rows:
            xs = [r["round"] for r in self.rows]
            plot_lines(
                self.dir / "accuracy.png",
                {self.cfg.strategy.name: (xs, [r["accuracy"] for r in self.rows])},
                "round", "accuracy (global test split)", f"{self.cfg.name}: {self.cfg.strategy.name}",
            )
        return self._write_summary(status)
