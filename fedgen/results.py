"""The results contract of a run folder.

config.yaml     the resolved experiment config
rounds.jsonl    one JSON object per round (round, the task's columns, bytes_up, bytes_down, seconds, and any extras)
rounds.csv      the same rows, contract columns only: round, the task's columns (a classifier's: accuracy, loss),
                bytes_up, bytes_down, seconds; a round the task does not score (a diffusion run scores every
                evaluation.every rounds) has empty task columns (null in rounds.jsonl)
bytes.csv       every ledger entry: round, client, direction, tier, kind, bytes
summary.json    strategy, dataset, partition, num_clients, rounds, seed, metric {name, higher_is_better}, final,
                best (of the headline metric; a classifier's also as final_accuracy, best_accuracy), final_scores
                (the last scored round's task columns), report_columns (those the comparison report shows beside
                the headline), bytes_up,
                bytes_down, bytes_by_tier {tier: {up, down}}, wall_seconds, status ('running' / 'finished' /
                'failed'), and extras; a run whose clients report privacy spent also epsilon (the largest any
                client reported, a report column) and privacy {epsilon, epsilon_opacus, delta, budget}
<metric>.png    the headline metric per round (accuracy.png for a classifier)
Rows are flushed as they come and the summary is rewritten each round, so an interrupted run keeps what it had;
files rewritten whole go to a temporary file first, synced to disk, then renamed over the old one.

A folder that holds a run is never reused silently (:func:`claim_run_folder`): a fresh run refuses it unless asked
to resume it or to overwrite it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedgen.comm import CLIENT_SERVER, DOWN, UP, ByteLedger
from fedgen.config import ConfigError, ExperimentConfig, dump_yaml
from fedgen.data.images import ImageSet
from fedgen.plots import figure
from fedgen.privacy import accountant
from fedgen.tasks import Headline
from fedgen.wire import DP_EPSILON, DP_EPSILON_OPACUS

BYTE_COLUMNS = ["bytes_up", "bytes_down", "seconds"]


def plot_lines(path: Path, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str, title: str,
               bands: dict[str, tuple[list, list]] | None = None) -> None:
    """One line per series; ``bands`` (label -> (low, high) at the same xs) shades a spread around its line."""
    with figure(path) as (_, ax):
        for label, (xs, ys) in series.items():
            (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=label)
            if bands and label in bands:
                ax.fill_between(xs, *bands[label], color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)


def save_image_grid(path: Path, images: ImageSet, class_names: list[str], per_class: int = 8) -> None:
    """A PNG grid of the first ``per_class`` images of each class present (one row per class)."""
    classes = [int(c) for c in np.unique(images.labels)]
    size = (per_class * 0.8, len(classes) * 0.85)
    with figure(path, len(classes), per_class, figsize=size, dpi=90, squeeze=False) as (_, axes):
        for row, c in zip(axes, classes, strict=True):
            idx = np.flatnonzero(images.labels == c)[:per_class]
            for j, ax in enumerate(row):
                ax.axis("off")
                if j < len(idx):
                    ax.imshow(images.images[idx[j]], interpolation="nearest")
            row[0].set_title(class_names[c], fontsize=7, loc="left")


def read_rounds(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "rounds.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def replace_atomically(path: str | Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, sync it to disk, then rename it over ``path``: a crash
    leaves the old file or the new one, never a part; a failing ``write`` leaves no temporary file behind."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.chmod(0o666 & ~_umask())  # mkstemp's 0600 would hide results from the folder's other readers
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:  # the rename itself, on disk
        os.fsync(folder)
    finally:
        os.close(folder)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, text: str) -> None:
    replace_atomically(path, lambda tmp: tmp.write_text(text))


RUN_FILES = ("rounds.jsonl", "summary.json", "checkpoint.pt")
"""What makes a folder a run folder: any of these (a run writes its rounds and summary before any other work)."""


class RunFolderTaken(ConfigError):
    """A fresh run was pointed at a folder that holds a run."""


def holds_run(folder: str | Path) -> bool:
    return any((Path(folder) / name).exists() for name in RUN_FILES)


def read_summary(folder: str | Path) -> dict[str, Any] | None:
    """The run's summary.json, or None where there is none that reads."""
    try:
        return json.loads((Path(folder) / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def describe_run(folder: str | Path) -> str:
    """'status, N rounds' of the run in ``folder``, from its summary."""
    summary = read_summary(folder)
    try:
        return f"{summary['status']}, {summary['rounds']} rounds"
    except (TypeError, KeyError):
        return "no readable summary"


def claim_run_folder(folder: str | Path, resume: bool = False, overwrite: bool = False) -> None:
    """Make ``folder`` ready for a run, or refuse before any work.

    A fresh run takes an empty or new folder; one that holds a run (any of :data:`RUN_FILES`) is refused, naming the
    ways on, unless ``overwrite`` (then the whole folder is removed first: never the working directory or one above
    it). ``resume`` needs the run's checkpoint.
    """
    folder = Path(folder).resolve()
    if resume:
        if not (folder / "checkpoint.pt").is_file():
            raise ConfigError(f"{folder}: nothing to resume (no checkpoint.pt: not a run folder, or no round ended)")
        return
    if not holds_run(folder):
        return
    if overwrite:
        if folder == Path.cwd() or folder in Path.cwd().parents:
            raise ConfigError(f"--overwrite would remove {folder}, which holds the working directory: give the run "
                              "folder itself")
        shutil.rmtree(folder)
        return
    raise RunFolderTaken(f"{folder} holds a run already ({describe_run(folder)}); continue it with "
                         f"`fedgen run --resume {folder}`, replace it with --overwrite, or choose another --out")


def _csv_text(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


class RunRecorder:
    """Writes one run's folder as rounds complete."""

    def __init__(
        self, out_dir: str | Path, cfg: ExperimentConfig, ledger: ByteLedger, headline: Headline,
        columns: tuple[str, ...], rows: list[dict] = (), elapsed: float = 0.0, report: tuple[str, ...] = (),
    ) -> None:
        """Start a run folder; a resumed run passes the rows and seconds it already had."""
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        self.ledger = ledger
        self.headline = headline
        self.task_columns, self.report = list(columns), list(report)
        self.columns = ["round", *columns, *BYTE_COLUMNS]
        self.rows: list[dict[str, Any]] = list(rows)
        self.extras: dict[str, Any] = {}
        self._t0 = time.perf_counter() - elapsed
        self._last = time.perf_counter()
        write_atomic(self.dir / "config.yaml", dump_yaml(cfg))
        write_atomic(self.dir / "rounds.jsonl", "".join(json.dumps(r) + "\n" for r in self.rows))
        write_atomic(self.dir / "rounds.csv", _csv_text([self.columns, *map(self._csv_row, self.rows)]))
        self._write_summary("running")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def record_round(self, rnd: int, scores: dict[str, float], extras: dict[str, Any]) -> dict[str, Any]:
        """Append one round's row (the task's scores, then that round's bytes from the ledger) and flush it; empty
        ``scores``: a round the task does not score."""
        now = time.perf_counter()
        row = {
            "round": rnd,
            **({c: None for c in self.task_columns} if not scores else {}),
            **{k: float(v) for k, v in scores.items()},
            "bytes_up": self.ledger.total(UP, round=rnd),
            "bytes_down": self.ledger.total(DOWN, round=rnd),
            "seconds": round(now - self._last, 3),
            **extras,
        }
        missing = [c for c in self.columns if c not in row]
        if missing:
            raise ValueError(f"round {rnd}: the task's scores lack the columns {missing}")
        self._last = now
        self.rows.append(row)
        with open(self.dir / "rounds.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        with open(self.dir / "rounds.csv", "a", newline="") as f:
            csv.writer(f).writerow(self._csv_row(row))
        self._write_summary("running")
        return row

    def _csv_row(self, row: dict[str, Any]) -> list:
        return ["" if row[c] is None else row[c] for c in self.columns]

    def summary(self, status: str) -> dict[str, Any]:
        scored = [r for r in self.rows if r[self.headline.name] is not None]
        trained = [r for r in scored if r["round"] > 0] or scored
        values = [r[self.headline.name] for r in trained]
        out = {
            "strategy": self.cfg.strategy.name,
            "dataset": self.cfg.data.dataset,
            "partition": self.cfg.data.partition.kind,
            "num_clients": self.cfg.data.num_clients,
            "rounds": max((r["round"] for r in self.rows), default=0),
            "seed": self.cfg.seed,
            "metric": {"name": self.headline.name, "higher_is_better": self.headline.higher_is_better},
            "report_columns": self.report,
            "final": values[-1] if values else None,
            "best": self.headline.best(values),
            "final_scores": {c: trained[-1][c] for c in self.task_columns} if trained else {},
        }
        if "accuracy" in self.columns:
            accs = [r["accuracy"] for r in trained]
            out.update(final_accuracy=accs[-1] if accs else None, best_accuracy=max(accs) if accs else None)
        out.update(self._privacy())
        tiers = sorted({e.tier for e in self.ledger.entries} | {CLIENT_SERVER})
        return {
            **out,
            "bytes_up": self.ledger.total(UP),
            "bytes_down": self.ledger.total(DOWN),
            "bytes_by_tier": {t: {"up": self.ledger.total(UP, tier=t), "down": self.ledger.total(DOWN, tier=t)}
                              for t in tiers},
            "wall_seconds": round(self.elapsed, 3),
            "status": status,
            **self.extras,
        }

    def _privacy(self) -> dict[str, Any]:
        """The largest epsilon the clients reported (:func:`fedgen.privacy.accountant.largest` over the rows'
        aggregated replies), against the budget."""
        def largest(key: str) -> float | None:
            return accountant.largest(self.rows, (f"train/{key}",))

        epsilon = largest(DP_EPSILON)
        if epsilon is None:
            return {}
        dp = self.cfg.dp
        return {"epsilon": epsilon, "report_columns": list(dict.fromkeys([*self.report, "epsilon"])),
                "privacy": {"epsilon": epsilon, "epsilon_opacus": largest(DP_EPSILON_OPACUS), "delta": dp.delta,
                            "budget": dp.epsilon}}

    def _write_summary(self, status: str) -> dict[str, Any]:
        summary = self.summary(status)
        write_atomic(self.dir / "summary.json", json.dumps(summary, indent=2))
        return summary

    def finish(self, status: str = "finished") -> dict[str, Any]:
        fields = ["round", "client", "direction", "tier", "kind", "bytes"]
        write_atomic(self.dir / "bytes.csv", _csv_text([fields, *([getattr(e, f) for f in fields]
                                                                  for e in self.ledger.entries)]))
        name = self.headline.name
        scored = [r for r in self.rows if r[name] is not None]
        if scored:
            plot_lines(
                self.dir / f"{name}.png",
                {self.cfg.strategy.name: ([r["round"] for r in scored], [r[name] for r in scored])},
                "round", f"{name} ({'higher' if self.headline.higher_is_better else 'lower'} is better)",
                f"{self.cfg.name}: {self.cfg.strategy.name}",
            )
        return self._write_summary(status)
