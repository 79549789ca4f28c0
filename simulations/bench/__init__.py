"""`make bench` / `fedgen bench`: figures, not pass/fail tests (one module per benchmark, the shared code in
:mod:`simulations.bench.harness`).

Each benchmark prints its figures and writes ``<out>/<name>.json`` with the machine it ran on. Ratios are measured
side by side in one run, because the machines are shared and noisy. Simulations run as ``fedgen run`` subprocesses,
so the memory of the whole process tree (the driver, Ray's GCS and raylet, every worker) is sampled from /proc.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from simulations.bench.bytes import bytes_, oscar_upload_bytes
from simulations.bench.diffusion import _diffusion_speed, diffusion
from simulations.bench.dp_images import dp_images
from simulations.bench.dp_step import dp_step
from simulations.bench.generation import generation
from simulations.bench.harness import run_fedgen, tree_pss_bytes, write
from simulations.bench.overhead import overhead
from simulations.bench.scale import scale
from simulations.bench.throughput import throughput
from simulations.procs import descendants

__all__ = ["BENCHMARKS", "_diffusion_speed", "descendants", "dp_images", "main", "oscar_upload_bytes", "run_fedgen",
           "tree_pss_bytes"]

BENCHMARKS = {"overhead": overhead, "scale": scale, "bytes": bytes_, "generation": generation, "throughput": throughput,
              "diffusion": diffusion, "dp-step": dp_step, "dp-images": dp_images}


def main(names: list[str], out: str) -> int:
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    out_dir = Path(out)
    with tempfile.TemporaryDirectory(prefix="fedgen-bench-") as tmp:
        for name in names or list(BENCHMARKS):
            t = time.perf_counter()
            figures = BENCHMARKS[name](Path(tmp))
            write(out_dir, name, {**figures, "bench_seconds": time.perf_counter() - t})
    return 0
