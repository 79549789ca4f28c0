"""`fedgen check CONFIG`: validate a config and its data; print the resolved config."""

from __future__ import annotations

import argparse

from fedgen.config import load_config
from simulations.cli.common import set_arg

HELP = "validate a config and its data, and print the resolved config"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config")
    set_arg(p)


def run(args: argparse.Namespace) -> int | None:
    from fedgen.config import dump_yaml
    from simulations.runner import check_runnable

    cfg = load_config(args.config, args.overrides)
    check_runnable(cfg)
    print(dump_yaml(cfg), end="")
    return None
