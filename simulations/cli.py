"""The `fedgen` command line.

fedgen run CONFIG.yaml [--set key=value ...] [--out DIR] [--verbose]
fedgen run --resume DIR                              continue an interrupted run from its last round
fedgen compare SUITE.yaml [--out DIR] [--check] [--verbose]
fedgen check CONFIG.yaml [--set key=value ...]      validate only
fedgen domains [--out PNG]                          draw the digits-domains grid
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedgen.config import ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedgen", description="Generative-model-assisted federated learning on Flower.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run one experiment in Flower's simulation engine (Ray)")
    r.add_argument("config", nargs="?")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--out", help="run folder (default runs/<name>-<strategy>-s<seed>-<time>)")
    r.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR (its config.yaml)")
    r.add_argument("--verbose", action="store_true", help="show Flower's and Ray's own logs")
    c = sub.add_parser("compare", help="run a comparison suite and write its report")
    c.add_argument("suite")
    c.add_argument("--out", default=None, help="report folder (default runs/compare-<suite name>)")
    c.add_argument("--check", action="store_true", help="fail if a method errors, records no rounds or is at chance")
    c.add_argument("--verbose", action="store_true")
    k = sub.add_parser("check", help="validate a config and its data, and print the resolved config")
    k.add_argument("config")
    k.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    d = sub.add_parser("domains", help="draw the digits-domains benchmark as a grid of domains x classes")
    d.add_argument("--out", default="docs/digits_domains.png")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            from simulations.runner import run
            from simulations.server_app import default_out_dir

            if args.resume:
                if args.config or args.overrides or args.out:
                    raise ConfigError("--resume DIR takes the run's own config.yaml: give no CONFIG, --set or --out")
                cfg, out = load_config(Path(args.resume) / "config.yaml"), args.resume
            elif args.config:
                cfg = load_config(args.config, args.overrides)
                out = args.out or default_out_dir(cfg)
            else:
                raise ConfigError("fedgen run needs a CONFIG.yaml or --resume DIR")
            summary = run(cfg, out, verbose=args.verbose, resume=bool(args.resume))
            print(f"final accuracy {summary['final_accuracy']:.4f}; results in {out}")
        elif args.command == "compare":
            from simulations.compare import compare

            out = args.out
            if out is None:
                from fedgen.config import load_suite

                out = f"runs/compare-{load_suite(args.suite)[0].name}"
            return compare(args.suite, out, verbose=args.verbose, check=args.check)
        elif args.command == "check":
            from fedgen.config import dump_yaml
            from simulations.runner import check_runnable

            cfg = load_config(args.config, args.overrides)
            check_runnable(cfg)
            print(dump_yaml(cfg), end="")
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
