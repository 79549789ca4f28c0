"""`fedgen deploy up|run|down|certs`: a real gRPC deployment (a SuperLink and SuperNodes) on this machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedgen.config import ConfigError
from simulations.cli.common import dir_arg, run_target, run_target_args, where

HELP = "a real gRPC deployment on this machine"


def add_arguments(p: argparse.ArgumentParser) -> None:
    dep = p.add_subparsers(dest="action", required=True)
    u = dep.add_parser("up", help="start a SuperLink and N SuperNodes (TLS + node authentication by default)")
    u.add_argument("--nodes", type=int, default=2)
    u.add_argument("--insecure", action="store_true", help="no TLS, no node authentication")
    u.add_argument("--certs", help="folder with ca.crt, server.pem, server.key (default: make throwaway ones)")
    dir_arg(u)
    u.add_argument("--state-dir", help="each node keeps its state (privacy ledger included) in STATE_DIR/node-<k> "
                   "(default: DIR/state)")
    u.add_argument("--dp-epsilon-max", type=float, help="each node's own privacy cap (node config dp-epsilon-max)")
    r = dep.add_parser("run", help="run an experiment on the deployment (flwr run), wait and check its status")
    run_target_args(r, resume_help="continue the interrupted run in DIR on the deployment")
    dir_arg(r)
    dir_arg(dep.add_parser("down", help="stop the processes `up` started, by PID"))
    c = dep.add_parser("certs", help="write a throwaway CA and server certificate for 127.0.0.1 / localhost")
    c.add_argument("folder")


def run(args: argparse.Namespace) -> int:
    from simulations import deploy

    if args.action == "up":
        state = deploy.up(args.dir, args.nodes, secure=not args.insecure, certs=args.certs,
                          state_root=args.state_dir, dp_epsilon_max=args.dp_epsilon_max)
        mode = "TLS + node authentication" if state["secure"] else "INSECURE"
        print(f"SuperLink on 127.0.0.1:{state['port']} (Fleet and control APIs, HTTP{'S' * state['secure']}), "
              f"{args.nodes} SuperNodes, {mode}; PIDs {state['pids']} in {args.dir}/deployment.json")
        home = Path(args.dir).resolve() / "flwr-home"
        print(f"run with: fedgen deploy run CONFIG --dir {args.dir}")
        print(f"      or: FLWR_HOME={home} flwr run . {deploy.CONNECTION}")
    elif args.action == "run":
        return _run(args)
    elif args.action == "down":
        stopped, left = deploy.down(args.dir)
        print(f"stopped PIDs {stopped}")
        if left:
            print(f"could not stop PIDs {left} (still recorded in {args.dir}/{deploy.STATE_FILE})", file=sys.stderr)
            return 1
    elif args.action == "certs":
        for name, path in deploy.make_certs(args.folder).items():
            print(f"{name}: {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    """`fedgen deploy run`: validate, claim the run folder, send the run, follow it to its end."""
    import json

    from fedgen.results import claim_run_folder
    from simulations import deploy
    from simulations.server_app import APP_ROOT

    config, cfg, out = run_target(args, "fedgen deploy run")  # fails here, before anything is sent
    state = deploy.load_state(args.dir)
    if cfg.data.num_clients != state["nodes"]:
        raise ConfigError(f"data.num_clients={cfg.data.num_clients} but the deployment has {state['nodes']} nodes")
    claim_run_folder(out, bool(args.resume), args.overwrite)
    run_config = {"config": str(config), "set": json.dumps(args.overrides), "out": str(out),
                  "resume": bool(args.resume)}
    try:
        run = deploy.flwr_run(args.dir, APP_ROOT, run_config, on_line=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print(f"interrupted: {out} keeps its finished rounds (see above whether the run was stopped on the "
              f"SuperLink). Continue it with `fedgen deploy run --resume {out}`", file=sys.stderr)
        return 130
    except deploy.SuperLinkGone as err:
        print(f"fedgen: {err}: it is gone (see {Path(args.dir) / 'superlink.log'}). {where(out)} Start a "
              f"deployment again (fedgen deploy down; fedgen deploy up) and continue with `fedgen deploy run --resume "
              f"{out}`", file=sys.stderr)
        return 1
    print(f"run {run['run-id']}: {run['status']} {run.get('status-details', '')}; results in {out}")
    return 0 if run["status"] == "finished:completed" else 1
