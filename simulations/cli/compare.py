"""`fedgen compare SUITE`: run a comparison suite, write its report, optionally gate it on a baseline."""

from __future__ import annotations

import argparse

from fedgen.config import ConfigError
from simulations.cli.common import gate_args, set_arg

HELP = "run a comparison suite and write its report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite")
    p.add_argument("--out", default=None, help="report folder (default runs/compare-<suite name>)")
    p.add_argument("--check", action="store_true", help="fail if a method errors, records no rounds or is at chance")
    set_arg(p, help="applied to every run, after the suite's own settings")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--resume", action="store_true",
                   help="keep the finished runs of --out, continue the interrupted ones, start the others")
    p.add_argument("--overwrite", action="store_true", help="replace the runs --out holds (default: refuse)")
    p.add_argument("--baseline", metavar="REPORT.csv", help="a stored report.csv: fail on a regression against it")
    gate_args(p)


def run(args: argparse.Namespace) -> int:
    from simulations.compare import compare

    out = args.out
    if out is None:
        from fedgen.config import load_suite

        out = f"runs/compare-{load_suite(args.suite)[0].name}"
    if args.resume and args.overwrite:
        raise ConfigError("--resume keeps the runs of --out, --overwrite replaces them: give one")
    return compare(args.suite, out, verbose=args.verbose, check=args.check, overrides=args.overrides,
                   baseline=args.baseline, tolerance=args.tolerance, bytes_tolerance=args.bytes_tolerance,
                   time_tolerance=args.time_tolerance, resume=args.resume, overwrite=args.overwrite)
