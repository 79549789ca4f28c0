"""`flwr run .` as Flower users run it, on Flower's local simulation SuperLink (the app's FAB: tests/test_tooling.py).

Each test gives Flower a temporary FLWR_HOME and free ports, so the local SuperLink that `flwr run` starts (and
leaves running, by Flower's design) is this test's own; the test stops it by PID (the process listening on its port).
The run uses the installed environment (FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1), as the README advises.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from simulations import deploy, procs

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _flwr_run(env: dict, run_config: str, *extra: str) -> tuple[str, dict]:
    """`flwr run . --stream`; returns its output and the run's record read back with `flwr list`."""
    proc = subprocess.run([str(BIN / "flwr"), "run", ".", "--run-config", run_config, *extra, "--stream"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]  # flwr run exits 0 even when the run fails: read its status
    run_id = re.search(r"Successfully started run (\d+)", output)[1]
    listed = subprocess.run([str(BIN / "flwr"), "list", "--run-id", run_id, "--format", "json"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    return output, json.loads(listed.stdout)["runs"][0]


@pytest.mark.e2e
def test_flwr_run_dot_runs_the_default_experiment_as_fedgen_run_does(tmp_path):
    http, control = deploy.free_port(), deploy.free_port()
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http),
           "FLWR_LOCAL_CONTROL_API_PORT": str(control), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    superlinks: set[int] = set()
    try:
        # Flower's default local federation has 2 SuperNodes, the default experiment 6 clients: it stops at once,
        # naming the option that sizes the federation
        output, run = _flwr_run(env, f"set='rounds=1' out='{tmp_path / 'too-few'}'")
        superlinks |= procs.listening(http)
        assert run["status"] == "finished:failed", run
        assert 'num-supernodes=6' in output and "num-partitions=2" in output

        out = tmp_path / "run"
        output, run = _flwr_run(env, f"set='rounds=1' out='{out}'",
                                "--federation-config", "num-supernodes=6 client-resources-num-cpus=1")
        superlinks |= procs.listening(http)
        assert run["status"] == "finished:completed", output[-3000:]
        assert "round   1/1" in output and f"run finished: {out}" in output
    finally:  # what `fedgen local-superlink stop` does
        stopped, _ = procs.stop(sorted(superlinks), grace=15)
    assert superlinks and not any(procs.alive(p) for p in stopped) and not procs.listening(http)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["strategy"] == "fedavg" and summary["num_clients"] == 6
    for f in ("config.yaml", "rounds.jsonl", "rounds.csv", "bytes.csv", "accuracy.png", "model.pt"):
        assert (out / f).exists(), f
    from fedgen.config import load_config
    from simulations.runner import run as fedgen_run

    same = fedgen_run(load_config(ROOT / "simulations/configs/digits_domains.yaml", ["rounds=1"]), tmp_path / "fedgen")
    rows = [json.loads(r) for r in (out / "rounds.jsonl").read_text().splitlines()]
    ours = [json.loads(r) for r in (tmp_path / "fedgen" / "rounds.jsonl").read_text().splitlines()]
    assert [r["accuracy"] for r in rows] == [r["accuracy"] for r in ours]
    assert summary["bytes_up"] == same["bytes_up"] and summary["final_accuracy"] == same["final_accuracy"]
