"""The ServerApp: builds the strategy from the config, runs it over the Grid, writes the run folder.

Two ways in, one body (:func:`run_experiment`):
- ``fedgen run CONFIG`` builds a ServerApp around an already validated config (:func:`make_server_app`);
- ``flwr run .`` loads the module-level ``app``, which reads the run config keys ``config`` (a YAML path),
  ``set`` (space-separated key=value overrides) and ``out`` (the run folder).
"""

from __future__ import annotations

import random
import shlex
import time
from datetime import datetime
from logging import getLogger
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedgen.comm import ByteLedger
from fedgen.config import ExperimentConfig, load_config
from fedgen.data import load_federation
from fedgen.models import build_model
from fedgen.results import RunRecorder
from fedgen.train import evaluate, resolve_device
from simulations.grid import AccountedGrid
from strategies import build_strategy
from strategies.local import LocalOnly
from strategies.server_side import ServerSideTraining

log = getLogger("fedgen")
DISCOVERY_TIMEOUT_S = 600.0


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def seed_everything(seed: int) -> None:
    random.seed(seed)  # Flower's node sampling draws from the global `random`
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_out_dir(cfg: ExperimentConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.name}-{cfg.strategy.name}-s{cfg.seed}-{stamp}"


def run_experiment(grid: Grid, cfg: ExperimentConfig, out_dir: str | Path) -> dict:
    """Run one experiment to completion over ``grid``; returns the summary."""
    seed_everything(cfg.seed)
    fed = load_federation(cfg.data, cfg.seed)
    device = resolve_device(cfg.device)

    def model_fn() -> torch.nn.Module:
        return build_model(cfg.model.name, fed.num_classes, cfg.model.norm, fed.image_shape[-1])

    model = model_fn()  # first draw after seeding: every method starts from the same initial model
    initial = ArrayRecord(model.state_dict())
    ledger = ByteLedger()
    grid = AccountedGrid(grid, ledger)
    recorder = RunRecorder(out_dir, cfg, ledger)
    strategy = build_strategy(cfg, fed, model_fn, device)
    experiment_json = cfg.to_json()
    t_round = time.perf_counter()

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        nonlocal t_round
        if hasattr(strategy, "evaluate_global"):
            metrics = strategy.evaluate_global(server_round, arrays, cfg.train.eval_batch_size)
        else:
            model.load_state_dict(arrays.to_torch_state_dict())
            loss, acc = evaluate(model, fed.test, cfg.train.eval_batch_size, device)
            metrics = MetricRecord({"accuracy": acc, "loss": loss})
        extra = {k: v for k, v in metrics.items() if k not in ("accuracy", "loss")}
        row = recorder.record_round(server_round, metrics["accuracy"], metrics["loss"], **extra)
        print(
            f"[{cfg.strategy.name} seed={cfg.seed}] round {server_round:>3}/{cfg.rounds}"
            f" | acc {row['accuracy']:.4f} | loss {row['loss']:.4f}"
            f" | up {_fmt_bytes(row['bytes_up'])} | down {_fmt_bytes(row['bytes_down'])}"
            f" | {time.perf_counter() - t_round:.1f} s",
            flush=True,
        )
        t_round = time.perf_counter()
        return metrics

    try:
        if not isinstance(strategy, ServerSideTraining):  # learn which node holds which partition
            found = grid.discover(experiment_json, cfg.data.num_clients, DISCOVERY_TIMEOUT_S)
            recorder.extras["label_histograms"] = {str(k): list(found[k]["label-histogram"]) for k in sorted(found)}
        result = strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=cfg.rounds,
            train_config=ConfigRecord({"experiment": experiment_json}),
            evaluate_config=ConfigRecord({"experiment": experiment_json}),
            evaluate_fn=evaluate_fn,
        )
    except BaseException:
        recorder.extras["failures"] = grid.failures
        recorder.finish("failed")
        raise
    if isinstance(strategy, LocalOnly):  # no global model: keep each client's own
        torch.save(strategy.models, recorder.dir / "client_models.pt")
    else:
        torch.save(result.arrays.to_torch_state_dict(), recorder.dir / "model.pt")
    recorder.extras["failures"] = grid.failures
    return recorder.finish("finished")


def make_server_app(cfg: ExperimentConfig, out_dir: str | Path) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_experiment(grid, cfg, out_dir)

    return app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    cfg = load_config(str(rc["config"]), shlex.split(str(rc.get("set", ""))))
    out = str(rc.get("out", "")) or default_out_dir(cfg)
    summary = run_experiment(grid, cfg, out)
    log.warning("run finished: %s", Path(out).resolve())
    if summary["status"] != "finished":
        raise RuntimeError(f"run ended with status {summary['status']}")
