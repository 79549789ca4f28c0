"""Runs a comparison suite: every method on identical partitions and seeds, then the report."""

from __future__ import annotations

import math
import os
import platform
import traceback
from collections.abc import Sequence
from pathlib import Path

from fedgen.checkpoint import CHECKPOINT
from fedgen.config import dump_yaml, load_suite
from fedgen.data import load_federation
from fedgen.regress import BYTES_TOLERANCE, TOLERANCE, gate, read_report
from fedgen.report import write_report
from fedgen.results import RunFolderTaken, describe_run, holds_run, read_summary
from simulations.runner import check_runnable, run


def machine_description() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {os.cpu_count()} cores, {mem_gb:.0f} GiB, {gpu}, torch {torch.__version__}"


def compare(suite_path: str | Path, out_dir: str | Path, verbose: bool = False, check: bool = False,
            overrides: Sequence[str] = (), baseline: str | Path | None = None, tolerance: float = TOLERANCE,
            bytes_tolerance: float = BYTES_TOLERANCE, time_tolerance: float | None = None, resume: bool = False,
            overwrite: bool = False) -> int:
    """Run every (method, seed) of the suite into ``out_dir``; returns a process exit code.

    A run folder that holds a run is refused before any run starts, unless ``resume`` (a finished run is kept as it
    is, an interrupted one continues from its checkpoint, the others start) or ``overwrite`` (each is replaced).

    With ``check``, also fails when a run records no rounds, has no final headline score (e.g. no FID) or ends at or
    below twice chance accuracy. With ``baseline`` (a stored report.csv), also fails when a method regressed against
    it (:mod:`fedgen.regress`); the comparison is written to ``diff.md``.
    """
    if baseline is not None:
        read_report(baseline)  # a missing or unreadable baseline fails before any run
    suite, configs = load_suite(suite_path, overrides)
    out_dir = Path(out_dir)
    taken = []
    for label, by_seed in configs.items():  # every run is validated before the first one starts
        for seed, cfg in by_seed.items():
            check_runnable(cfg)
            run_dir = out_dir / label / f"seed{seed}"
            if holds_run(run_dir):
                taken.append(f"{run_dir} ({describe_run(run_dir)})")
                stored = run_dir / "config.yaml"
                if resume and stored.is_file() and stored.read_text() != dump_yaml(cfg):
                    raise RunFolderTaken(f"--resume: {run_dir} was run with other settings than the suite now gives "
                                         f"(its config.yaml): resume with the same settings, or --overwrite")
    if taken and not (resume or overwrite):
        raise RunFolderTaken("these run folders hold runs already:\n  " + "\n  ".join(taken) + "\ncontinue "
                             "them with --resume (finished runs are kept), replace them with --overwrite, or choose "
                             "another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict[int, Path]] = {}
    problems: list[str] = []
    for label, by_seed in configs.items():
        for seed, cfg in by_seed.items():
            run_dir = out_dir / label / f"seed{seed}"
            kept = read_summary(run_dir) if resume else None
            finished = kept is not None and kept.get("status") == "finished"
            print(f"== {suite.name}: {label}, seed {seed} -> {run_dir}{' (finished: kept)' * finished}", flush=True)
            try:
                if finished:
                    summary = kept
                else:  # with resume, a run that failed before its first checkpoint starts again
                    restart = not (run_dir / CHECKPOINT).is_file()
                    summary = run(cfg, run_dir, verbose=verbose, resume=resume and not restart,
                                  overwrite=overwrite or (resume and restart))
            except Exception as err:  # noqa: BLE001 - one failing method must not lose the others
                traceback.print_exc()
                problems.append(f"{label} seed {seed}: failed: {err}")
                continue
            done.setdefault(label, {})[seed] = run_dir
            if check and summary["rounds"] < 1:
                problems.append(f"{label} seed {seed}: recorded no rounds")
            if check and not math.isfinite(summary["final"] if summary["final"] is not None else math.nan):
                problems.append(f"{label} seed {seed}: produced no {summary['metric']['name']} "
                                f"(final: {summary['final']})")
            if check and summary["metric"]["name"] == "accuracy":
                chance = 1.0 / load_federation(cfg.data, cfg.seed).num_classes
                if (summary["final"] or 0.0) <= 2 * chance:
                    problems.append(f"{label} seed {seed}: final accuracy {summary['final']:.4f} is at chance "
                                    f"(<= {2 * chance:.2f})")
    if done:
        md = write_report(out_dir, suite.name, done, machine_description(), target=suite.target)
        print(md)
        print(f"report: {(out_dir / 'report.md').resolve()}")
        if baseline is not None:
            passed, diff_md = gate(baseline, out_dir / "report.csv", out_dir / "diff.md", tolerance, bytes_tolerance,
                                   time_tolerance)
            print(diff_md)
            print(f"diff: {(out_dir / 'diff.md').resolve()}")
            if not passed:
                problems.append(f"regressed against {baseline}: see {out_dir / 'diff.md'}")
    for p in problems:
        print(f"PROBLEM: {p}")
    return 1 if problems else 0

