"""End to end through the `fedgen` command and Flower's simulation engine on Ray."""

import csv
import json
import os
import subprocess
import sys

import pytest

FEDGEN = [sys.executable, "-m", "simulations.cli"]


@pytest.mark.e2e
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


@pytest.mark.integration
def test_fedgen_run_on_ray_writes_the_results_contract(tmp_path):
    """Through Flower's simulation engine: FedDF over a federation of three architectures (one client each), whose
    console shows each group's accuracy."""
    out = tmp_path / "run"
    env = {**os.environ, "RAY_TMPDIR": os.environ["RAY_TMPDIR"]}
    feddf = ["strategy.name=feddf", "strategy.architectures=[cnn,resnet8,mobilenet]", "strategy.max_steps=20",
             "strategy.eval_every=10", "strategy.batch_size=64"]
    proc = subprocess.run(
        [*FEDGEN, "run", "simulations/configs/digits_domains.yaml", "--set", "rounds=2", "--set",
         "data.num_clients=3", "--set", "data.partition.kind=iid", *[a for f in feddf for a in ("--set", f)],
         "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "round   2/2" in proc.stdout and "accuracy-mobilenet" in proc.stdout  # a progress line per round
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["rounds"] == 2 and summary["strategy"] == "feddf"
    assert summary["final_accuracy"] > 0.5 and summary["bytes_up"] > 0 and summary["bytes_down"] > 0
    assert not summary["failures"] and all(summary["final_scores"][f"accuracy-{a}"] > 0.3
                                           for a in ("cnn", "resnet8", "mobilenet"))
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2] and all(r["seconds"] >= 0 for r in rows)
    assert len((out / "rounds.csv").read_text().splitlines()) == 4
    for f in ("config.yaml", "accuracy.png", "bytes.csv", "model.pt"):
        assert (out / f).exists(), f


RESUMED = {
    "feddyn-classifier": (["simulations/configs/digits_domains.yaml", "--set", "data.partition.kind=iid", "--set",
                           "strategy.name=feddyn"], "model.pt"),
}


@pytest.mark.e2e
@pytest.mark.parametrize("case", RESUMED)
def test_a_killed_run_resumes_to_the_same_result(tmp_path, case):
    """Stop `fedgen run` (its process group and every descendant, Ray's included) after round 1, as a scheduler
    would; `--resume` must finish it with the same final model and scores as an uninterrupted run."""
    import time

    import torch

    from simulations import procs

    base, model_file = RESUMED[case]
    args = [*base, "--set", "rounds=2", "--set", "data.num_clients=4", "--set", "strategy.fraction_train=0.5",
            "--set", "deterministic=true",
            "--set", f"evaluation.cache_dir={tmp_path / 'reference'}"]
    whole, cut = tmp_path / "whole", tmp_path / "broke"
    subprocess.run([*FEDGEN, "run", *args, "--out", str(whole)], check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen([*FEDGEN, "run", *args, "--out", str(cut)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            rows = (cut / "rounds.jsonl").read_text().splitlines() if (cut / "rounds.jsonl").exists() else []
            if len(rows) >= 2:  # rounds 0 and 1 are on disk
                break
            time.sleep(0.2)
    finally:
        procs.stop([proc.pid], grace=10)
        proc.wait()
    kept = json.loads((cut / "summary.json").read_text())
    assert kept["status"] == "running" and kept["rounds"] == 1
    resumed = subprocess.run([*FEDGEN, "run", "--resume", str(cut)], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    rows = [json.loads(line) for line in (cut / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2]
    a, b = torch.load(whole / model_file), torch.load(cut / model_file)
    assert all(torch.equal(a[k], b[k]) for k in a)
    s_whole, s_cut = (json.loads((r / "summary.json").read_text()) for r in (whole, cut))
    metric = s_whole["metric"]["name"]
    assert [r[metric] for r in rows] == [json.loads(line)[metric]
                                         for line in (whole / "rounds.jsonl").read_text().splitlines()]

    def sampled_and_bytes(run):  # 2 of 4 clients per round: the resumed run must sample as the whole one did
        with open(run / "bytes.csv") as f:
            return sorted((e["round"], e["client"], e["direction"], e["kind"], e["bytes"]) for e in csv.DictReader(f))

    assert sampled_and_bytes(cut) == sampled_and_bytes(whole)
    assert len({(r, c) for r, c, d, k, _ in sampled_and_bytes(whole) if k.startswith("train")}) == 2 * 2
    assert (s_cut["bytes_up"], s_cut["bytes_down"]) == (s_whole["bytes_up"], s_whole["bytes_down"])
