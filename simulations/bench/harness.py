"""The benchmarks' shared harness: the machine a benchmark ran on, writing its ``<out>/<name>.json``, and
``fedgen run`` in a subprocess with the peak memory (PSS) of its whole process tree sampled from /proc."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from simulations.procs import descendants, stop

CONFIGS = Path(__file__).parents[1] / "configs"
DIGITS = str(CONFIGS / "digits_domains.yaml")


# --- the machine and the results ------------------------------------------------------------------------------------
def machine() -> dict:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kb = int(next(ln for ln in meminfo if ln.startswith("MemTotal")).split()[1])
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    libs = ["torch", "flwr", "ray", "transformers", "diffusers"]

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:  # a GPU machine may run the benchmarks that need no Ray without it
            return "not installed"

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(), "python": platform.python_version(), "cpu_cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1), "gpu": gpu, "torch_threads": torch.get_num_threads(),
        "versions": {name: installed(name) for name in libs},
    }


def write(out: Path, name: str, figures: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **figures}, indent=2))
    print(f"[bench {name}] {json.dumps(figures)}\n[bench {name}] -> {path}", flush=True)
    return path


# --- process-tree memory --------------------------------------------------------------------------------------------
def tree_pss_bytes(root: int) -> int:
    """Proportional set size of ``root`` and all its descendants: shared pages (torch's libraries in every Ray
    worker) are counted once, split among the processes that map them."""
    total = 0
    for pid in {root} | descendants({root}):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def run_fedgen(config: str, overrides: list[str], out: Path, sample_s: float = 0.5) -> dict:
    """``fedgen run`` in a subprocess (a session of its own); returns its wall time, its rounds and the peak PSS of its
    process tree. Interrupted (Ctrl-C) or failing while it runs, the run and its Ray workers are stopped by PID."""
    cmd = [sys.executable, "-m", "simulations.cli", "run", config, "--out", str(out)]
    for o in overrides:
        cmd += ["--set", o]
    out.mkdir(parents=True, exist_ok=True)
    peak, t0 = 0, time.perf_counter()
    with open(out / "bench.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while proc.poll() is None:
                peak = max(peak, tree_pss_bytes(proc.pid))
                time.sleep(sample_s)
        finally:
            if proc.poll() is None:  # not reaped, so the PID is still the run's
                stop([proc.pid])
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}; see {out / 'bench.log'}")
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    return {"wall_s": wall, "rounds": rounds, "summary": summary, "peak_pss_bytes": peak}


def _round_seconds(rounds: list[dict], skip_first: int = 1) -> list[float]:
    """Seconds of each federated round (round 0, the initial evaluation, left out), the first ``skip_first`` too."""
    return [r["seconds"] for r in rounds if r["round"] > skip_first]
