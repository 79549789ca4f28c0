"""The `fedgen` command line.

fedgen run CONFIG.yaml [--set key=value ...] [--out DIR] [--verbose]
fedgen run --resume DIR                              continue an interrupted run from its last round
fedgen compare SUITE.yaml [--out DIR] [--check] [--set ...] [--baseline REPORT.csv [--tolerance X]]
fedgen diff STORED.csv NEW.csv [--tolerance X]       the regression gate alone
fedgen check CONFIG.yaml [--set key=value ...]      validate only
fedgen domains [--out PNG]                          draw the digits-domains grid
fedgen deploy up [--nodes N] [--insecure] [--certs DIR] [--dir DIR]   a SuperLink + N SuperNodes on this machine
fedgen deploy run CONFIG [--set key=value ...] [--out DIR] [--dir DIR]  run an experiment on them, wait, check
fedgen deploy down [--dir DIR]                      stop exactly what `up` started
fedgen deploy certs DIR                             a throwaway CA and server certificate (testing only)
fedgen foundation prepare embedded [CONFIG] [--set ...]   pre-train the embedded captioner and generator
fedgen bench [NAME ...] [--out DIR]                 overhead, scale, bytes, generation, throughput, diffusion, dp-step,
                                                     dp-images
fedgen audit RUN_DIR|COMPARE_DIR ... [--canary-runs N] [--client P] [--out DIR]   membership inference and a canary
                                                     audit of diffusion runs
fedgen local-superlink stop [--port P]              stop the local SuperLink that `flwr run` started and left running
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedgen.config import ConfigError, load_config, load_tree


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedgen", description="Generative-model-assisted federated learning on Flower.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one experiment in Flower's simulation engine (Ray)")
    r.add_argument("config", nargs="?")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--out", help="run folder (default runs/<name>-<strategy>-s<seed>-<time>)")
    r.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR (its config.yaml)")
    r.add_argument("--overwrite", action="store_true", help="replace the run that --out holds (default: refuse)")
    r.add_argument("--verbose", action="store_true", help="show Flower's and Ray's own logs")
    c = sub.add_parser("compare", help="run a comparison suite and write its report")
    c.add_argument("suite")
    c.add_argument("--out", default=None, help="report folder (default runs/compare-<suite name>)")
    c.add_argument("--check", action="store_true", help="fail if a method errors, records no rounds or is at chance")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="applied to every run, after the suite's own settings")
    c.add_argument("--verbose", action="store_true")
    c.add_argument("--resume", action="store_true",
                   help="keep the finished runs of --out, continue the interrupted ones, start the others")
    c.add_argument("--overwrite", action="store_true", help="replace the runs --out holds (default: refuse)")
    c.add_argument("--baseline", metavar="REPORT.csv", help="a stored report.csv: fail on a regression against it")
    _gate_args(c)
    g = sub.add_parser("diff", help="compare a report.csv with a stored one; exit 1 on a regression")
    g.add_argument("baseline", help="the stored report.csv")
    g.add_argument("report", help="the new report.csv")
    g.add_argument("--out", default=None, help="where to write the Markdown (default: diff.md beside REPORT)")
    _gate_args(g)
    k = sub.add_parser("check", help="validate a config and its data, and print the resolved config")
    k.add_argument("config")
    k.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    dep = sub.add_parser("deploy", help="a real gRPC deployment on this machine").add_subparsers(
        dest="action", required=True)
    u = dep.add_parser("up", help="start a SuperLink and N SuperNodes (TLS + node authentication by default)")
    u.add_argument("--nodes", type=int, default=2)
    u.add_argument("--insecure", action="store_true", help="no TLS, no node authentication")
    u.add_argument("--certs", help="folder with ca.crt, server.pem, server.key (default: make throwaway ones)")
    u.add_argument("--dir", default=DEPLOY_DIR)
    u.add_argument("--state-dir", help="each node keeps its state (privacy ledger included) in STATE_DIR/node-<k> "
                   "(default: DIR/state)")
    u.add_argument("--dp-epsilon-max", type=float, help="each node's own privacy cap (node config dp-epsilon-max)")
    dr = dep.add_parser("run", help="run an experiment on the deployment (flwr run), wait and check its status")
    dr.add_argument("config", nargs="?")
    dr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    dr.add_argument("--out", help="run folder (default runs/<name>-<strategy>-s<seed>-<time>)")
    dr.add_argument("--overwrite", action="store_true", help="replace the run that --out holds (default: refuse)")
    dr.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR on the deployment")
    dr.add_argument("--dir", default=DEPLOY_DIR)
    dd = dep.add_parser("down", help="stop the processes `up` started, by PID")
    dd.add_argument("--dir", default=DEPLOY_DIR)
    dc = dep.add_parser("certs", help="write a throwaway CA and server certificate for 127.0.0.1 / localhost")
    dc.add_argument("folder")
    fnd = sub.add_parser("foundation", help="foundation models").add_subparsers(dest="action", required=True)
    fp = fnd.add_parser("prepare", help="pre-train the embedded profile on digits-domains' public split")
    fp.add_argument("profile", choices=["embedded"])
    fp.add_argument("config", nargs="?", help="an experiment YAML whose foundation section to use (default: defaults)")
    fp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    b = sub.add_parser("bench", help="benchmarks: overhead, scale, bytes, generation, throughput, diffusion, dp-step, "
                       "dp-images (default: all)")
    b.add_argument("names", nargs="*")
    b.add_argument("--out", default="bench/results", help="folder of the <name>.json results")
    a = sub.add_parser("audit", help="empirical privacy of diffusion runs: membership inference, canary auditing")
    a.add_argument("paths", nargs="+", help="run folders, or comparison folders (each of their runs)")
    a.add_argument("--out", help="folder of audit.md, audit.json, roc.png (default: <first path>/audit)")
    a.add_argument("--timesteps", default=None,
                   help="the attack's timesteps, comma-separated (its score: the mean error over them; default "
                        "50,100,200,500)")
    a.add_argument("--draws", type=int, default=4, help="noise draws per example and timestep")
    a.add_argument("--examples", type=int, default=1000, help="at most this many members, and as many non-members")
    a.add_argument("--client", type=int, default=None,
                   help="members: this client's training examples (default: every client's); canaries: this "
                        "client's round (default 0)")
    a.add_argument("--canary-runs", type=int, default=0,
                   help="replay a client's round this many times with a canary and as many without (0: no audit)")
    a.add_argument("--canary-rounds", type=int, default=None,
                   help="rounds of the client's training each canary run replays (default: the run's rounds)")
    a.add_argument("--confidence", type=float, default=0.95, help="of the Clopper-Pearson and bootstrap intervals")
    ls = sub.add_parser("local-superlink", help="the local simulation SuperLink that `flwr run` starts")
    ls.add_argument("action", choices=["stop"])
    ls.add_argument("--port", type=int, default=None,
                    help="its HTTP port (default: $FLWR_LOCAL_SUPERLINK_HTTP_API_PORT or Flower's 39091)")
    d = sub.add_parser("domains", help="draw the digits-domains benchmark as a grid of domains x classes")
    d.add_argument("--out", default="docs/digits_domains.png")
    return p


DEPLOY_DIR = "runs/deploy"


def _gate_args(p: argparse.ArgumentParser) -> None:
    from fedgen.regress import BYTES_TOLERANCE, TOLERANCE

    p.add_argument("--tolerance", type=float, default=TOLERANCE,
                   help=f"how much worse the mean final headline score may get, in its own units ({TOLERANCE})")
    p.add_argument("--bytes-tolerance", type=float, default=BYTES_TOLERANCE,
                   help=f"relative growth of bytes allowed ({BYTES_TOLERANCE})")
    p.add_argument("--time-tolerance", type=float, default=None,
                   help="relative growth of wall time allowed (default: wall time is shown, not gated)")


def _deploy(args: argparse.Namespace) -> int:
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
        return _deploy_run(args)
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


def _deploy_run(args: argparse.Namespace) -> int:
    """`fedgen deploy run`: validate, claim the run folder, send the run, follow it to its end."""
    import json

    from fedgen.results import claim_run_folder
    from simulations import deploy
    from simulations.server_app import APP_ROOT

    config, cfg, out = _run_target(args, "fedgen deploy run")  # fails here, before anything is sent
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
        print(f"fedgen: {err}: it is gone (see {Path(args.dir) / 'superlink.log'}). {_where(out)} Start a "
              f"deployment again (fedgen deploy down; fedgen deploy up) and continue with `fedgen deploy run --resume "
              f"{out}`", file=sys.stderr)
        return 1
    print(f"run {run['run-id']}: {run['status']} {run.get('status-details', '')}; results in {out}")
    return 0 if run["status"] == "finished:completed" else 1


def _run_target(args: argparse.Namespace, command: str):
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


def _where(out: Path) -> str:
    """Where a run folder stands: its last checkpointed round."""
    from fedgen.results import read_rounds

    rounds = [r["round"] for r in read_rounds(out)]
    return f"The run folder {out} holds rounds up to {max(rounds)}." if rounds else f"{out} holds no finished round."


def _prepare(args: argparse.Namespace) -> int:
    import json
    import time

    from fedgen.config import apply_overrides, validate
    from fedgen.foundation.embedded import MANIFEST, prepare_embedded

    tree = apply_overrides(load_tree(args.config) if args.config else {}, args.overrides)
    cfg = validate(tree, source=args.config or "defaults").foundation
    t0 = time.perf_counter()
    folder = prepare_embedded(cfg.embedded, cfg.cache_dir)
    manifest = json.loads((folder / MANIFEST).read_text())
    keys = ("seconds", "captioner_loss", "captioner_digit_accuracy_on_test", "class_fidelity", "vae_loss",
            "diffusion_loss")
    print(json.dumps({k: manifest[k] for k in keys}, indent=2))
    print(f"embedded foundation models in {folder} ({time.perf_counter() - t0:.1f} s this call)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            from simulations.runner import run

            _, cfg, out = _run_target(args, "fedgen run")
            summary = run(cfg, out, verbose=args.verbose, resume=bool(args.resume), overwrite=args.overwrite)
            print(f"final {summary['metric']['name']} {summary['final']:.4f}; results in {out}")
        elif args.command == "compare":
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
        elif args.command == "diff":
            from fedgen.regress import gate

            out = args.out or Path(args.report).with_name("diff.md")
            passed, md = gate(args.baseline, args.report, out, args.tolerance, args.bytes_tolerance,
                              args.time_tolerance)
            print(md)
            return 0 if passed else 1
        elif args.command == "check":
            from fedgen.config import dump_yaml
            from simulations.runner import check_runnable

            cfg = load_config(args.config, args.overrides)
            check_runnable(cfg)
            print(dump_yaml(cfg), end="")
        elif args.command == "deploy":
            return _deploy(args)
        elif args.command == "foundation":
            return _prepare(args)
        elif args.command == "audit":
            from simulations import audit

            timesteps = tuple(int(t) for t in args.timesteps.split(",")) if args.timesteps else \
                audit.Settings.timesteps
            settings = audit.Settings(timesteps, args.draws, args.examples, args.client, args.canary_runs,
                                      args.canary_rounds, args.confidence)
            return audit.main(args.paths, args.out, settings)
        elif args.command == "bench":
            from simulations.bench import main as bench

            return bench(args.names, args.out)
        elif args.command == "local-superlink":
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
        elif args.command == "domains":
            from fedgen.data.digits import save_domain_grid

            save_domain_grid(args.out)
            print(args.out)
    except ConfigError as err:
        print(f"fedgen: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
