"""`fedgen bench [NAME ...]`: the benchmarks of :mod:`simulations.bench` (figures, not pass/fail)."""

from __future__ import annotations

import argparse

# The names of simulations.bench.BENCHMARKS, written out because importing that package loads torch (seconds), and
# every `fedgen` call builds this parser; simulations.bench.main checks the names given (tests/test_cli.py: these).
NAMES = ("overhead", "scale", "bytes", "generation", "throughput", "diffusion", "dp-step", "dp-images")
HELP = f"benchmarks: {', '.join(NAMES)} (default: all)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*")
    p.add_argument("--out", default="bench/results", help="folder of the <name>.json results")


def run(args: argparse.Namespace) -> int:
    from simulations.bench import main as bench

    return bench(args.names, args.out)
