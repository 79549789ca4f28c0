"""`fedgen foundation prepare embedded [CONFIG]`: pre-train the embedded captioner and generator."""

from __future__ import annotations

import argparse

from simulations.cli.common import set_arg

HELP = "foundation models"


def add_arguments(p: argparse.ArgumentParser) -> None:
    fp = p.add_subparsers(dest="action", required=True).add_parser(
        "prepare", help="pre-train the embedded profile on digits-domains' public split")
    fp.add_argument("profile", choices=["embedded"])
    fp.add_argument("config", nargs="?", help="an experiment YAML whose foundation section to use (default: defaults)")
    set_arg(fp)


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from fedgen.config import apply_overrides, load_tree, validate
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
