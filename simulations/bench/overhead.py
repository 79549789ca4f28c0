"""``fedgen bench overhead``, the simulation's overhead: FedAvg rounds under Flower and Ray (``fedgen run``)
against the same arithmetic in one process."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from simulations.bench.harness import DIGITS, _round_seconds, run_fedgen


def bare_fedavg_rounds(cfg, rounds: int) -> list[float]:
    """FedAvg's arithmetic in one process: the same clients, local steps, data and global evaluation, no Flower."""
    from fedgen.data import load_federation
    from fedgen.models import classifier
    from fedgen.train import client_seed, evaluate, resolve_device, train

    fed = load_federation(cfg.data, cfg.seed)
    device = resolve_device(cfg.device, cfg.deterministic)  # the device the virtual clients use

    def new_model():
        return classifier(cfg, fed)

    glob = new_model().state_dict()
    times = []
    for rnd in range(1, rounds + 1):
        t = time.perf_counter()
        states, weights = [], []
        for k in range(fed.num_clients):
            model = new_model()
            model.load_state_dict(glob)
            result = train(model, fed.client(k)[0], cfg.train, device, seed=client_seed(cfg.seed, rnd, k))
            states.append(model.state_dict())
            weights.append(result.num_examples)
        w = torch.tensor(weights, dtype=torch.float64) / sum(weights)
        glob = {key: sum(wi * s[key].double() for wi, s in zip(w, states, strict=True)).to(states[0][key].dtype)
                for key in glob}
        model = new_model()
        model.load_state_dict(glob)
        evaluate(model, fed.test, cfg.train.eval_batch_size, device, len(fed.domain_names))
        times.append(time.perf_counter() - t)
    return times


def overhead(work: Path, rounds: int = 5) -> dict:
    from fedgen.config import load_config

    sets = ["strategy.name=fedavg", f"rounds={rounds}"]
    cfg = load_config(DIGITS, sets)
    bare = bare_fedavg_rounds(cfg, rounds)
    ray = run_fedgen(DIGITS, sets, work / "overhead")
    ray_rounds = _round_seconds(ray["rounds"])
    bare_steady = statistics.median(bare[1:])
    ray_steady = statistics.median(ray_rounds)
    return {
        "setup": f"digits-domains, {cfg.data.num_clients} clients (all sampled), small CNN, {rounds} FedAvg rounds of "
                 f"{cfg.train.local_epochs} local epoch, global evaluation each round; Ray: "
                 f"{cfg.ray.client_num_cpus} CPU per virtual client",
        "bare_round_s": bare, "ray_round_s": [r["seconds"] for r in ray["rounds"] if r["round"] > 0],
        "bare_steady_s": bare_steady, "ray_steady_s": ray_steady,
        "overhead_ratio": ray_steady / bare_steady,
        "ray_startup_s": ray["wall_s"] - sum(r["seconds"] for r in ray["rounds"] if r["round"] > 0),
        "target_ratio": 1.2,
    }
