"""``fedgen bench scale``: seconds per round and the peak memory of the process tree as the client count grows."""

from __future__ import annotations

import statistics
from pathlib import Path

from simulations.bench.harness import DIGITS, _round_seconds, run_fedgen


def scale(work: Path, sizes=(100, 1000, 5000), sampled: int = 10, rounds: int = 3) -> dict:
    points = []
    for n in sizes:
        sets = [
            "strategy.name=fedavg", f"rounds={rounds}", f"data.num_clients={n}", "data.partition.kind=iid",
            f"strategy.fraction_train={sampled / n}", f"strategy.min_train_clients={sampled}", "model.norm=group",
        ]
        res = run_fedgen(DIGITS, sets, work / f"scale-{n}")
        per_round = _round_seconds(res["rounds"], skip_first=0)
        points.append({
            "clients": n, "sampled_per_round": sampled, "peak_pss_gib": res["peak_pss_bytes"] / 2**30,
            "round_s": per_round, "median_round_s": statistics.median(per_round),
            "startup_s": res["wall_s"] - sum(per_round), "wall_s": res["wall_s"],
        })
        print(f"[bench scale] {points[-1]}", flush=True)
    return {
        "setup": f"digits-domains split IID, {sampled} clients sampled per round, small CNN (GroupNorm: a client may "
                 f"hold a single image), {rounds} FedAvg rounds; memory is the peak PSS of the whole process tree",
        "points": points, "target": "under 4 GiB at 1,000 clients; seconds per round flat in the client count",
    }
