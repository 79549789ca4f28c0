"""One experiment over a Flower Grid, as a run whose steps read in order: set up, resume, discover, prepare, rounds,
finish.

After every round: the task's scores in the results, and a checkpoint (global arrays, strategy state, RNG, byte
ledger) from which a resumed run continues exactly.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

import strategies
from fedgen import checkpoint, foundation
from fedgen.comm import UP, ByteLedger
from fedgen.config import ExperimentConfig
from fedgen.data import load_federation
from fedgen.results import RunRecorder, claim_run_folder, read_rounds
from fedgen.train import randomness, resolve_device
from fedgen.wire import CLIENT_STATE_DIR, EXPERIMENT, LABEL_HISTOGRAM
from simulations.grid import PROCESS_DIED, AccountedGrid
from simulations.loop import run_rounds

SHORT = {"accuracy": "acc"}
"""Console names of score columns."""


def seed_everything(seed: int) -> None:
    random.seed(seed)  # Flower's node sampling draws from the global `random`
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_experiment(grid: Grid, cfg: ExperimentConfig, out_dir: str | Path, resume: bool = False) -> dict:
    """Run one experiment over ``grid`` to completion (or, with ``resume``, from its last checkpoint); its summary."""
    return Experiment(grid, cfg, Path(out_dir), resume).run()


class Experiment:
    def __init__(self, grid: Grid, cfg: ExperimentConfig, out_dir: Path, resume: bool) -> None:
        self.cfg, self.out_dir, self.resuming = cfg, out_dir, resume
        self.raw_grid = grid
        self.tag = f"[{cfg.strategy.name} seed={cfg.seed}]"

    def run(self) -> dict:
        self.setup()
        if self.resuming:
            self.resume()
        self.record()
        try:
            self.discover()
            if self.resuming:
                self.restore_after_discovery()
            else:
                self.prepare()
            self.rounds()
        except BaseException:
            self.recorder.extras["failures"] = self.grid.failures
            self.recorder.finish("failed")
            raise
        return self.finish()

    # --- the steps, in order ------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Claim the folder, seed, draw the initial model first, and build the strategy and its scoring."""
        cfg = self.cfg
        claim_run_folder(self.out_dir, self.resuming)  # the callers asked to overwrite have removed the old run
        seed_everything(cfg.seed if cfg.init_seed is None else cfg.init_seed)
        self.method = strategies.method(cfg.strategy.name)
        self.fed = load_federation(cfg.data, cfg.seed)
        self.ledger = ByteLedger()
        device = resolve_device(cfg.device, cfg.deterministic)
        ctx = strategies.RunContext(cfg, self.fed, self.method.model(cfg, self.fed, None), device, self.out_dir,
                                    self.ledger)
        self.ctx = ctx
        self.arrays = ArrayRecord(self.method.initial(ctx))  # the first draw after seeding
        if cfg.init_seed is not None:  # the initial model came from init_seed; everything after it from seed
            seed_everything(cfg.seed)
        self.model_bytes = self.arrays.count_bytes()
        self.models_used = None
        if self.method.foundation:  # the embedded profile is pre-trained here on first use
            self.models_used = foundation.resolve(cfg.foundation, prepare=True).describe()
        self.grid = AccountedGrid(self.raw_grid, self.ledger, min_nodes=cfg.strategy.min_train_clients,
                                  wait_s=cfg.strategy.round_timeout_s, tier=self.method.client_tier)
        self.strategy = self.method.build(ctx)
        self.task = self.method.task(ctx, self.strategy)
        self.grid.checks.update(self.method.reply_checks(self.strategy))
        self.first_round, self.rows, self.elapsed = 1, [], 0.0

    def resume(self) -> None:
        """Continue after the last checkpointed round: its arrays, strategy state, ledger, failures and rows."""
        self.ckpt = ckpt = checkpoint.load(self.out_dir)
        self.first_round = ckpt["round"] + 1
        self.arrays = ArrayRecord(ckpt["arrays"])
        if self.method.checkpoint:
            self.strategy.load_state_dict(ckpt["strategy"])
        self.ledger.restore(ckpt["ledger"])
        self.grid.failures.extend(ckpt["failures"])
        self.rows = [r for r in read_rounds(self.out_dir) if r["round"] <= ckpt["round"]]
        self.elapsed = ckpt["wall_seconds"]
        print(f"{self.tag} resuming {self.out_dir} after round {ckpt['round']}", flush=True)

    def record(self) -> None:
        """The run's results, with what identifies its randomness and models."""
        cfg, task = self.cfg, self.task
        self.recorder = RunRecorder(self.out_dir, cfg, self.ledger, task.headline, task.columns, rows=self.rows,
                                    elapsed=self.elapsed, report=task.report)
        self.recorder.extras.update(task.extras, randomness=randomness(cfg.seed, cfg.init_seed, cfg.data.split_seed))
        if self.models_used:
            self.recorder.extras["foundation_models"] = self.models_used
        self.experiment_json = cfg.to_json()
        client_state = self.out_dir / "client_state"  # simulated clients' state (a SuperNode's state-dir is its own)
        self.config = ConfigRecord({EXPERIMENT: self.experiment_json,
                                    CLIENT_STATE_DIR: str(client_state.resolve())})
        self.t_round = time.perf_counter()

    def discover(self) -> None:
        """Learn which node holds which partition, and the client facts the algorithm uses."""
        if not self.method.federated:
            return
        cfg, query = self.cfg, self.method.query
        found = self.grid.discover(self.experiment_json, cfg.data.num_clients, cfg.strategy.round_timeout_s, query)
        if LABEL_HISTOGRAM in query:
            self.recorder.extras["label_histograms"] = {str(k): list(found[k][LABEL_HISTOGRAM]) for k in sorted(found)}

    def restore_after_discovery(self) -> None:
        """A resumed run's query only re-learns node ids: its bytes are not the experiment's, nor its draws."""
        self.ledger.restore(self.ckpt["ledger"])
        checkpoint.set_rng_state(self.ckpt["rng"])
        self._prepared_figures()

    def prepare(self) -> None:
        """The method's phase before round 1, if any, and round 0's scores."""
        prepared = self.method.prepare(self.ctx, self.strategy, self.grid, self.arrays)
        self.arrays, extras = prepared if prepared is not None else (self.arrays, {})
        self.after_round(0, self.arrays, extras)
        self._prepared_figures()

    def rounds(self) -> None:
        cfg = self.cfg
        self.arrays = run_rounds(
            self.strategy, self.grid, self.arrays, self.first_round, cfg.rounds, train_config=self.config,
            evaluate_config=self.config, timeout=cfg.strategy.round_timeout_s,
            min_train_replies=cfg.strategy.min_train_clients, after_round=self.after_round,
            failures=lambda rnd: round_failures(self.grid.failures, rnd, cfg),
        )

    def finish(self) -> dict:
        for stem, obj in self.task.final_models(self.arrays.to_torch_state_dict()).items():
            checkpoint.save_atomic(obj, self.out_dir / f"{stem}.pt")
        self.recorder.extras["failures"] = self.grid.failures
        self.recorder.extras.update(upload_figures(self.ledger, self.model_bytes, self.fed.num_clients))
        return self.recorder.finish("finished")

    # --- after each round -----------------------------------------------------------------------------------------
    def after_round(self, server_round: int, arrays: ArrayRecord, extras: dict) -> None:
        """Score, record, print a line, and checkpoint."""
        cfg, task, recorder = self.cfg, self.task, self.recorder
        row = recorder.record_round(server_round, task.evaluate(server_round, arrays.to_torch_state_dict()), extras)
        scores = " | ".join(f"{SHORT.get(c, c)} {row[c]:.4f}" for c in task.columns if row[c] is not None)
        print(
            f"{self.tag} round {server_round:>3}/{cfg.rounds} | {scores or 'not scored'}"
            f" | up {_fmt_bytes(row['bytes_up'])} | down {_fmt_bytes(row['bytes_down'])}"
            f" | {time.perf_counter() - self.t_round:.1f} s",
            flush=True,
        )
        checkpoint.save(
            self.out_dir,
            {
                "round": server_round,
                "arrays": arrays.to_torch_state_dict(),
                "strategy": self.strategy.state_dict() if self.method.checkpoint else None,
                "rng": checkpoint.rng_state(),
                "ledger": [asdict(e) for e in self.ledger.entries],
                "failures": list(self.grid.failures),
                "wall_seconds": recorder.elapsed,
            },
        )
        self.t_round = time.perf_counter()

    def _prepared_figures(self) -> None:
        """The preparing phase's figures in the summary too, from round 0's row (which a resumed run read back)."""
        if self.method.prepares:
            name = self.cfg.strategy.name
            prefix = f"{name}/"
            self.recorder.extras[name] = {k.removeprefix(prefix): v for k, v in self.recorder.rows[0].items()
                                          if k.startswith(prefix)}


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


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
