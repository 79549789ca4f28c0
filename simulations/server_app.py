"""The ServerApp: builds the strategy from the config, runs it over the Grid, writes the run folder.

Two ways in, one body (:func:`run_experiment`):
- ``fedgen run CONFIG`` builds a ServerApp around an already validated config (:func:`make_server_app`);
- ``flwr run .`` loads the module-level ``app``, which reads the run config keys ``config`` (a YAML path),
  ``set`` (space-separated key=value overrides) and ``out`` (the run folder).
"""

from __future__ import annotations

import json
import random
import shlex
import time
from dataclasses import asdict
from datetime import datetime
from logging import getLogger
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

import strategies
from fedgen import checkpoint, foundation
from fedgen.comm import UP, ByteLedger
from fedgen.config import ConfigError, ExperimentConfig, load_config
from fedgen.data import load_federation
from fedgen.results import RunRecorder, claim_run_folder, read_rounds
from fedgen.train import randomness, resolve_device
from fedgen.wire import CLIENT_STATE_DIR, EXPERIMENT, LABEL_HISTOGRAM
from simulations.grid import PROCESS_DIED, AccountedGrid
from simulations.loop import run_rounds

log = getLogger("fedgen")
APP_ROOT = Path(__file__).resolve().parents[1]
SHORT = {"accuracy": "acc"}
"""Console names of score columns."""


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


def run_experiment(grid: Grid, cfg: ExperimentConfig, out_dir: str | Path, resume: bool = False) -> dict:
    """Run one experiment over ``grid`` to completion (or, with ``resume``, from its last checkpoint).

    After every round: the task's scores in the results, and a checkpoint (global arrays, strategy state, RNG, byte
    ledger) from which ``resume`` continues exactly.
    """
    out_dir = Path(out_dir)
    claim_run_folder(out_dir, resume)  # the callers asked to overwrite have removed the old run already
    seed_everything(cfg.seed if cfg.init_seed is None else cfg.init_seed)
    method = strategies.method(cfg.strategy.name)
    fed = load_federation(cfg.data, cfg.seed)
    device = resolve_device(cfg.device)
    ledger = ByteLedger()
    ctx = strategies.RunContext(cfg, fed, strategies.TASKS[cfg.task].model(cfg, fed), device, out_dir, ledger)
    arrays = ArrayRecord(method.initial(ctx))  # the first draw after seeding
    if cfg.init_seed is not None:  # the initial model came from init_seed; everything after it from seed
        seed_everything(cfg.seed)
    model_bytes = arrays.count_bytes()
    models_used = None
    if method.foundation:  # the embedded profile is pre-trained here on first use
        models_used = foundation.resolve(cfg.foundation, prepare=True).describe()
    grid = AccountedGrid(grid, ledger, min_nodes=cfg.strategy.min_train_clients,
                         wait_s=cfg.strategy.round_timeout_s, tier=method.client_tier)
    strategy = method.build(ctx)
    task = method.task(ctx, strategy)
    grid.checks.update(method.reply_checks(strategy))
    first_round, rows, elapsed = 1, [], 0.0
    if resume:
        ckpt = checkpoint.load(out_dir)
        first_round = ckpt["round"] + 1
        arrays = ArrayRecord(ckpt["arrays"])
        if method.checkpoint:
            strategy.load_state_dict(ckpt["strategy"])
        ledger.restore(ckpt["ledger"])
        grid.failures.extend(ckpt["failures"])
        rows = [r for r in read_rounds(out_dir) if r["round"] <= ckpt["round"]]
        elapsed = ckpt["wall_seconds"]
        print(f"[{cfg.strategy.name} seed={cfg.seed}] resuming {out_dir} after round {ckpt['round']}", flush=True)
    recorder = RunRecorder(out_dir, cfg, ledger, task.headline, task.columns, rows=rows, elapsed=elapsed,
                           report=task.report)
    recorder.extras.update(task.extras, randomness=randomness(cfg.seed, cfg.init_seed, cfg.data.split_seed))
    if models_used:
        recorder.extras["foundation_models"] = models_used
    experiment_json = cfg.to_json()
    t_round = time.perf_counter()

    def after_round(server_round: int, arrays: ArrayRecord, extras: dict) -> None:
        nonlocal t_round
        row = recorder.record_round(server_round, task.evaluate(server_round, arrays.to_torch_state_dict()), extras)
        scores = " | ".join(f"{SHORT.get(c, c)} {row[c]:.4f}" for c in task.columns if row[c] is not None)
        print(
            f"[{cfg.strategy.name} seed={cfg.seed}] round {server_round:>3}/{cfg.rounds} | {scores or 'not scored'}"
            f" | up {_fmt_bytes(row['bytes_up'])} | down {_fmt_bytes(row['bytes_down'])}"
            f" | {time.perf_counter() - t_round:.1f} s",
            flush=True,
        )
        checkpoint.save(
            out_dir,
            {
                "round": server_round,
                "arrays": arrays.to_torch_state_dict(),
                "strategy": strategy.state_dict() if method.checkpoint else None,
                "rng": checkpoint.rng_state(),
                "ledger": [asdict(e) for e in ledger.entries],
                "failures": list(grid.failures),
                "wall_seconds": recorder.elapsed,
            },
        )
        t_round = time.perf_counter()

    client_state = out_dir / "client_state"  # simulated clients' state (a SuperNode with a state-dir keeps its own)
    config = ConfigRecord({EXPERIMENT: experiment_json, CLIENT_STATE_DIR: str(client_state.resolve())})
    try:
        if method.federated:  # learn which node holds which partition, and the facts the algorithm uses
            found = grid.discover(experiment_json, cfg.data.num_clients, cfg.strategy.round_timeout_s, method.query)
            if LABEL_HISTOGRAM in method.query:
                recorder.extras["label_histograms"] = {str(k): list(found[k][LABEL_HISTOGRAM]) for k in sorted(found)}
        if resume:  # the resumed run's query only re-learns node ids: its bytes are not the experiment's
            ledger.restore(ckpt["ledger"])
            checkpoint.set_rng_state(ckpt["rng"])
        else:
            prepared = method.prepare(ctx, strategy, grid, arrays)
            arrays, extras = prepared if prepared is not None else (arrays, {})
            after_round(0, arrays, extras)
        if method.prepares:  # its figures in the summary too, from round 0's row (which a resumed run read back)
            prefix = f"{cfg.strategy.name}/"
            recorder.extras[cfg.strategy.name] = {k.removeprefix(prefix): v for k, v in recorder.rows[0].items()
                                                  if k.startswith(prefix)}
        arrays = run_rounds(
            strategy, grid, arrays, first_round, cfg.rounds, train_config=config, evaluate_config=config,
            timeout=cfg.strategy.round_timeout_s, min_train_replies=cfg.strategy.min_train_clients,
            after_round=after_round,
            failures=lambda rnd: round_failures(grid.failures, rnd, cfg),
        )
    except BaseException:
        recorder.extras["failures"] = grid.failures
        recorder.finish("failed")
        raise
    for stem, obj in task.final_models(arrays.to_torch_state_dict()).items():
        checkpoint.save_atomic(obj, out_dir / f"{stem}.pt")
    recorder.extras["failures"] = grid.failures
    recorder.extras.update(upload_figures(ledger, model_bytes, fed.num_clients))
    return recorder.finish("finished")


def round_failures(failures: list[dict], rnd: int, cfg: ExperimentConfig) -> list[str]:
    """Each failure of round ``rnd`` in a line, and advice when client processes died."""
    reasons = [f"client {f['client']}: {f['reason']}" for f in failures if f["round"] == rnd]
    if any(PROCESS_DIED in r for r in reasons):
        reasons.append(
            f"client processes died (Ray replaced each up to ray.max_restarts={cfg.ray.max_restarts} times); if they "
            "ran out of memory, lower train.batch_size, give each client more of the machine (ray.client_num_cpus, "
            "ray.client_num_gpus: fewer clients at once), or use a machine with more memory")
    return reasons


def upload_figures(ledger: ByteLedger, model_bytes: int, num_clients: int) -> dict:
    """Upload per client (all rounds; round 0, fedgen's partition query, left out) against one model upload."""
    per_client = ledger.per_client(UP, first_round=1)
    mean = float(np.mean([per_client.get(k, 0) for k in range(num_clients)]))
    return {"model_upload_bytes": model_bytes, "upload_per_client_bytes": mean,
            "upload_per_client_pct_of_model": 100.0 * mean / model_bytes}


def _flag(value) -> bool:
    """A run config boolean (TOML's, or a string typed by hand)."""
    return value is True or str(value).lower() in ("true", "1", "yes")


def run_overrides(text: str) -> list[str]:
    """The run config's ``set``: a JSON list of key=value overrides (what ``fedgen deploy run`` sends: any YAML
    value survives, quotes and braces included), or, typed by hand, space-separated shell words."""
    if text.lstrip().startswith("["):
        overrides = json.loads(text)
        if not (isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
            raise ConfigError(f"run config 'set': expected a JSON list of 'key=value' strings, got {text!r}")
        return overrides
    return shlex.split(text)


def make_server_app(cfg: ExperimentConfig, out_dir: str | Path, resume: bool = False) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_experiment(grid, cfg, out_dir, resume=resume)

    return app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    path = Path(str(rc["config"]))
    if not path.is_absolute() and not path.exists():  # relative to the app (the FAB's folder under `flwr run`)
        path = APP_ROOT / path
    cfg = load_config(path, run_overrides(str(rc.get("set", ""))))
    out = Path(str(rc.get("out", "")) or default_out_dir(cfg)).resolve()  # relative to where the SuperLink started
    resume = _flag(rc.get("resume", False))
    claim_run_folder(out, resume, overwrite=_flag(rc.get("overwrite", False)))
    print(f"[{cfg.strategy.name} seed={cfg.seed}] run folder {out}", flush=True)
    summary = run_experiment(grid, cfg, out, resume=resume)
    print(f"[{cfg.strategy.name} seed={cfg.seed}] run finished: {out}", flush=True)
    if summary["status"] != "finished":
        raise RuntimeError(f"run ended with status {summary['status']}")
