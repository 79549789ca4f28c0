"""`fedgen diff STORED.csv NEW.csv`: the regression gate alone (exit 1 on a regression)."""

from __future__ import annotations

import argparse
from pathlib import Path

from simulations.cli.common import gate_args

HELP = "compare a report.csv with a stored one; exit 1 on a regression"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("baseline", help="the stored report.csv")
    p.add_argument("report", help="the new report.csv")
    p.add_argument("--out", default=None, help="where to write the Markdown (default: diff.md beside REPORT)")
    gate_args(p)


def run(args: argparse.Namespace) -> int:
    from fedgen.regress import gate

    out = args.out or Path(args.report).with_name("diff.md")
    passed, md = gate(args.baseline, args.report, out, args.tolerance, args.bytes_tolerance, args.time_tolerance)
    print(md)
    return 0 if passed else 1
