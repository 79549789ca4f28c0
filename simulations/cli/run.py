"""`fedgen run CONFIG | --resume DIR`: one experiment in Flower's simulation engine."""

from __future__ import annotations

import argparse

from simulations.cli.common import run_target, run_target_args

HELP = "run one experiment in Flower's simulation engine (Ray)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    run_target_args(p, resume_help="continue the interrupted run in DIR (its config.yaml)")
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's own logs")


def run(args: argparse.Namespace) -> int | None:
    from simulations.runner import run as run_experiment

    _, cfg, out = run_target(args, "fedgen run")
    summary = run_experiment(cfg, out, verbose=args.verbose, resume=bool(args.resume), overwrite=args.overwrite)
    print(f"final {summary['metric']['name']} {summary['final']:.4f}; results in {out}")
    return None
