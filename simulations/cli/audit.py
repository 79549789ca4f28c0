"""`fedgen audit PATH ...`: empirical privacy of diffusion runs (membership inference, canary audits)."""

from __future__ import annotations

import argparse

HELP = "empirical privacy of diffusion runs: membership inference, canary auditing"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", help="run folders, or comparison folders (each of their runs)")
    p.add_argument("--out", help="folder of audit.md, audit.json, roc.png (default: <first path>/audit)")
    p.add_argument("--timesteps", default=None,
                   help="the attack's timesteps, comma-separated (its score: the mean error over them; default "
                        "50,100,200,500)")
    p.add_argument("--draws", type=int, default=4, help="noise draws per example and timestep")
    p.add_argument("--examples", type=int, default=1000, help="at most this many members, and as many non-members")
    p.add_argument("--client", type=int, default=None,
                   help="members: this client's training examples (default: every client's); canaries: this "
                        "client's round (default 0)")
    p.add_argument("--canary-runs", type=int, default=0,
                   help="replay a client's round this many times with a canary and as many without (0: no audit)")
    p.add_argument("--canary-rounds", type=int, default=None,
                   help="rounds of the client's training each canary run replays (default: the run's rounds)")
    p.add_argument("--confidence", type=float, default=0.95, help="of the Clopper-Pearson and bootstrap intervals")


def run(args: argparse.Namespace) -> int:
    from simulations import audit

    timesteps = tuple(int(t) for t in args.timesteps.split(",")) if args.timesteps else audit.Settings.timesteps
    settings = audit.Settings(timesteps, args.draws, args.examples, args.client, args.canary_runs,
                              args.canary_rounds, args.confidence)
    return audit.main(args.paths, args.out, settings)
