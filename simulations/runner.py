"""Runs one experiment through Flower's simulation engine (Ray backend)."""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

from fedgen.config import ConfigError, ExperimentConfig
from fedgen.data import load_federation
from fedgen.results import claim_run_folder


def check_runnable(cfg: ExperimentConfig) -> None:
    """Fail before any work on what the schema alone cannot see: missing data, impossible partitions."""
    try:
        load_federation(cfg.data, cfg.seed)
    except (FileNotFoundError, ValueError, IndexError) as err:
        raise ConfigError(f"data: {err}") from None
    inception = cfg.evaluation.inception
    if cfg.task == "diffusion" and inception and not Path(inception).expanduser().is_file():
        raise ConfigError(f"evaluation.inception: no file at {inception} (the FID Inception-v3 weights, "
                          "torch-fidelity's pt_inception-2015-12-05-6726825d.pth)")


def backend_config(cfg: ExperimentConfig) -> dict:
    init_args: dict = {"include_dashboard": False}
    if cfg.ray.address:
        init_args["address"] = cfg.ray.address
    else:
        # "local": always a new instance. Without it, ray.init joins the last cluster `ray start` left on this
        # machine (recorded in its temp dir), even a stopped one.
        init_args["address"] = "local"
        init_args["num_cpus"] = os.cpu_count() or 1
        if cfg.ray.client_num_gpus > 0:
            import torch

            init_args["num_gpus"] = torch.cuda.device_count()
    return {
        "init_args": init_args,
        # Flower hands this dict to Ray's actor.options(): max_restarts makes Ray replace a client process that dies
        "client_resources": {"num_cpus": cfg.ray.client_num_cpus, "num_gpus": cfg.ray.client_num_gpus,
                             "max_restarts": cfg.ray.max_restarts},
    }


def _not_a_client_failure(record: logging.LogRecord) -> bool:
    """False for the simulation engine's log of a failed client task (the Grid logs each failure in a line) and for
    Flower's notice that ``run_simulation`` is deprecated (it is what `fedgen run` drives; `flwr run .` works too)."""
    return not (record.pathname.endswith(("vce_api.py", "raybackend.py"))
                or str(record.msg).lstrip().startswith("DEPRECATED FEATURE"))


def quiet_flower(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    flwr_log = logging.getLogger("flwr")
    flwr_log.setLevel(level)
    flwr_log.removeFilter(_not_a_client_failure)
    if not verbose:
        flwr_log.addFilter(_not_a_client_failure)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def run(cfg: ExperimentConfig, out_dir: str | Path, verbose: bool = False, resume: bool = False,
        client_app=None, overwrite: bool = False) -> dict:
    """Validate, then simulate ``cfg`` with ``data.num_clients`` virtual SuperNodes; returns the summary.

    With ``resume``, continue the run in ``out_dir`` from its last completed round; a folder that holds a run is
    otherwise refused unless ``overwrite`` (:func:`fedgen.results.claim_run_folder`). ``client_app`` replaces the
    project's ClientApp (tests).
    """
    check_runnable(cfg)
    claim_run_folder(out_dir, resume, overwrite)
    from flwr.simulation import run_simulation

    if client_app is None:
        from clients.app import app as client_app
    from simulations.server_app import make_server_app

    out_dir = Path(out_dir)
    quiet_flower(verbose)
    run_simulation(
        server_app=make_server_app(cfg, out_dir, resume=resume),
        client_app=client_app,
        num_supernodes=cfg.data.num_clients,
        backend_name="ray",
        backend_config=backend_config(cfg),
        verbose_logging=verbose,
    )
    summary_path = out_dir / "summary.json"
    if not summary_path.exists():
        raise RuntimeError(f"the simulation ended without writing {summary_path}")
    summary = json.loads(summary_path.read_text())
    if summary["status"] != "finished":
        raise RuntimeError(f"run in {out_dir} ended with status {summary['status']}")
    return summary
