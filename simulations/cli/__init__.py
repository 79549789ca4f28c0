"""The `fedgen` command line: one module per subcommand, each with its one-line ``HELP``, ``add_arguments(parser)``
and ``run(args)`` (an exit code; None is 0). ``fedgen --help`` lists them; ``fedgen SUBCOMMAND --help`` tells more.
Shared options and helpers: :mod:`simulations.cli.common`."""

from __future__ import annotations

import argparse
import sys

from fedgen.config import ConfigError
from simulations.cli import audit, bench, check, compare, deploy, diff, domains, foundation, local_superlink, run

__all__ = ["COMMANDS", "main"]

COMMANDS = {"run": run, "compare": compare, "diff": diff, "check": check, "deploy": deploy, "foundation": foundation,
            "bench": bench, "audit": audit, "local-superlink": local_superlink, "domains": domains}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedgen", description="Generative-model-assisted federated learning on Flower.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.HELP))
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = COMMANDS[args.command].run(args)
    except ConfigError as err:
        print(f"fedgen: {err}", file=sys.stderr)
        return 2
    return 0 if code is None else code
