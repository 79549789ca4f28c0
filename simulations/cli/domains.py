"""`fedgen domains`: draw the digits-domains benchmark."""

from __future__ import annotations

import argparse

HELP = "draw the digits-domains benchmark as a grid of domains x classes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="docs/digits_domains.png")


def run(args: argparse.Namespace) -> int | None:
    from fedgen.data.digits import save_domain_grid

    save_domain_grid(args.out)
    print(args.out)
    return None
