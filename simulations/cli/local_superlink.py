"""`fedgen local-superlink stop`: stop the local SuperLink that `flwr run` started and left running."""

from __future__ import annotations

import argparse
import sys

HELP = "the local simulation SuperLink that `flwr run` starts"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["stop"])
    p.add_argument("--port", type=int, default=None,
                   help="its HTTP port (default: $FLWR_LOCAL_SUPERLINK_HTTP_API_PORT or Flower's 39091)")


def run(args: argparse.Namespace) -> int:
    import os

    from simulations import procs

    port = args.port or int(os.environ.get("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "39091"))
    pids = sorted(procs.listening(port))
    if not pids:
        print(f"nothing listens on port {port}")
        return 0
    stopped, left = procs.stop(pids)
    print(f"stopped PIDs {stopped}")
    if left:
        print(f"could not stop PIDs {left}", file=sys.stderr)
        return 1
    return 0
