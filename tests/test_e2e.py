"""End to end through the `fedgen` command and Flower's simulation engine on Ray."""

import json
import os
import subprocess
import sys

import pytest

FEDGEN = [sys.executable, "-m", "simulations.cli"]


def test_bad_config_fails_before_any_work(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [*FEDGEN, "run", "simulations/configs/digits_domains.yaml", "--set", "data.partition.alpha=-1",
         "--set", "strategy.nme=fedavg", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "data.partition.alpha: Input should be greater than 0" in proc.stderr
    assert "strategy.nme: unknown key" in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_fedgen_run_on_ray_writes_the_results_contract(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "RAY_TMPDIR": os.environ["RAY_TMPDIR"]}
    proc = subprocess.run(
        [*FEDGEN, "run", "simulations/configs/digits_domains.yaml", "--set", "rounds=2", "--set",
         "data.num_clients=3", "--set", "data.partition.kind=iid", "--set", "strategy.name=fedprox",
         "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "round   2/2" in proc.stdout  # a progress line per round
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["rounds"] == 2 and summary["strategy"] == "fedprox"
    assert summary["final_accuracy"] > 0.5 and summary["bytes_up"] > 0 and summary["bytes_down"] > 0
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2] and all(r["seconds"] >= 0 for r in rows)
    assert len((out / "rounds.csv").read_text().splitlines()) == 4
    for f in ("config.yaml", "accuracy.png", "bytes.csv", "model.pt"):
        assert (out / f).exists(), f
