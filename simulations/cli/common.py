"""Options and helpers that several subcommands share."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedgen.config import ConfigError, load_config

DEPLOY_DIR = "runs/deploy"


def set_arg(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """--set KEY=VALUE, repeatable: config overrides (``args.overrides``)."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def dir_arg(p: argparse.ArgumentParser) -> None:
    """--dir: the deployment's folder."""
    p.add_argument("--dir", default=DEPLOY_DIR)


def run_target_args(p: argparse.ArgumentParser, resume_help: str) -> None:
    """CONFIG, --set, --out, --resume DIR and --overwrite: what :func:`run_target` reads."""
    p.add_argument("config", nargs="?")
    set_arg(p)
    p.add_argument("--out", help="run folder (default runs/<name>-<strategy>-s<seed>-<time>)")
    p.add_argument("--resume", metavar="DIR", help=resume_help)
    p.add_argument("--overwrite", action="store_true", help="replace the run that --out holds (default: refuse)")


def gate_args(p: argparse.ArgumentParser) -> None:
    """The regression gate's tolerances."""
    from fedgen.regress import BYTES_TOLERANCE, TOLERANCE

    p.add_argument("--tolerance", type=float, default=TOLERANCE,
                   help=f"how much worse the mean final headline score may get, in its own units ({TOLERANCE})")
    p.add_argument("--bytes-tolerance", type=float, default=BYTES_TOLERANCE,
                   help=f"relative growth of bytes allowed ({BYTES_TOLERANCE})")
    p.add_argument("--time-tolerance", type=float, default=None,
                   help="relative growth of wall time allowed (default: wall time is shown, not gated)")


def run_target(args: argparse.Namespace, command: str):
    """(the config's path, the validated config, the run folder) of `fedgen run` / `fedgen deploy run`: a new run's
    CONFIG, --set and --out, or the run in --resume DIR with its own config.yaml; paths absolute."""
    from simulations.server_app import default_out_dir

    if args.resume:
        if args.config or args.overrides or args.out or args.overwrite:
            raise ConfigError("--resume DIR takes the run's own config.yaml: give no CONFIG, --set, --out or "
                              "--overwrite")
        config = Path(args.resume, "config.yaml").resolve()
        return config, load_config(config), Path(args.resume).resolve()
    if not args.config:
        raise ConfigError(f"{command} needs a CONFIG.yaml or --resume DIR")
    config = Path(args.config).resolve()
    cfg = load_config(config, args.overrides)
    return config, cfg, Path(args.out or default_out_dir(cfg)).resolve()


def where(out: Path) -> str:
    """Where a run folder stands: its last checkpointed round."""
    from fedgen.results import read_rounds

    rounds = [r["round"] for r in read_rounds(out)]
    return f"The run folder {out} holds rounds up to {max(rounds)}." if rounds else f"{out} holds no finished round."
