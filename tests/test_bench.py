"""The benchmark harness: its measurements are real and land in JSON with the machine (figures are not asserted)."""

import json
import os

import pytest

from simulations import bench

pytestmark = pytest.mark.bench


def test_process_tree_memory_counts_children(tmp_path):
    import subprocess
    import sys
    import time

    alone = bench.tree_pss_bytes(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", 'import time; x = b"x" * (200 * 2**20); time.sleep(30)'])
    try:
        time.sleep(3)
        assert bench.tree_pss_bytes(os.getpid()) - alone > 150 * 2**20
    finally:
        child.kill()
        child.wait()


def test_an_interrupted_benchmark_stops_the_run_it_started_and_its_children(tmp_path, monkeypatch):
    """Ctrl-C while `fedgen run` works (here a stand-in that starts a child, as the run starts Ray's workers, and
    sleeps): the run and its child are stopped, by PID, before the interrupt goes on."""
    import stat
    import sys
    import time

    from simulations.procs import alive

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nsleep 300 &\nsleep 300\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(sys, "executable", str(fake))
    seen: set[int] = set()

    def interrupted(root: int) -> int:
        for _ in range(50):  # until the stand-in has started its child
            seen.update({root} | bench.descendants({root}))
            if len(seen) > 2:
                break
            time.sleep(0.1)
        raise KeyboardInterrupt

    monkeypatch.setattr(bench.harness, "tree_pss_bytes", interrupted)  # where run_fedgen looks it up
    with pytest.raises(KeyboardInterrupt):
        bench.run_fedgen("config.yaml", [], tmp_path / "run")
    assert len(seen) == 3 and not any(alive(pid) for pid in seen), seen


def test_oscar_upload_is_its_wire_format():
    half = bench.oscar_upload_bytes(10, 16, 32, "float16")
    full = bench.oscar_upload_bytes(10, 16, 32, "float32")
    assert 10 * 16 * 32 * 2 < half < 10 * 16 * 32 * 2 + 2000
    assert full - half == 10 * 16 * 32 * 2


def test_a_benchmark_writes_its_figures_and_the_machine(tmp_path):
    assert bench.main(["throughput"], str(tmp_path)) == 0
    result = json.loads((tmp_path / "throughput.json").read_text())
    assert result["machine"]["cpu_cores"] == os.cpu_count() and "torch" in result["machine"]["versions"]
    assert result["ours_images_per_s"] > 0 and result["bare_images_per_s"] > 0
    assert bench.main(["nope"], str(tmp_path)) == 2


def test_diffusion_speed_trains_and_samples_the_named_unet():
    import torch

    point = bench._diffusion_speed("tiny", torch.device("cpu"), "none", train_images=8, batch=4, sample_images=2,
                                   sample_steps=1)
    assert point["unet"] == "tiny" and point["device"] == "cpu" and point["parameters"] > 0
    assert point["train_images_per_s"] > 0 and point["sample_images_per_s"] > 0


def test_the_private_unet_step_is_timed_and_its_memory_measured(tmp_path, monkeypatch):
    """One alternation, one step: the three variants (plain, DP, DP in chunks) each get a time and a peak (measured,
    so only their presence is asserted). What DP's extra peak is made of is counted exactly instead: its per-sample
    gradients, K x batch times the plain step's gradient at once, or K x chunk times it in physical chunks."""
    import subprocess
    import sys

    import torch

    from fedgen.config import DiffusionConfig, DpConfig
    from fedgen.diffusion import build_unet, image_denoising, noise_scheduler
    from fedgen.privacy import accountant, dp_diffusion

    # a process of its own: the benchmark fixes glibc's mmap threshold for its whole process, and measures that
    # process's resident set
    code = ("import json; from pathlib import Path; from simulations import bench; print(json.dumps("
            "bench.dp_images(Path('.'), batch=8, steps=1, repeats=1, multiplicities=(2,))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu = [p for p in figures["points"] if p["device"] == "cpu"]
    assert [p["noise_multiplicity"] for p in cpu] == [2]
    for p in cpu:
        assert p["plain step_s"] > 0 and p["dp step_s"] > 0 and p["dp, chunks of 16 step_s"] > 0
        assert min(p["plain peak_extra_mb"], p["dp peak_extra_mb"], p["dp, chunks of 16 peak_extra_mb"]) >= 0

    held = []  # bytes of per-sample gradients held when a chunk's backward is done
    original = dp_diffusion._mean_over_draws

    def counting(params, k):
        held.append(sum(q.grad_sample.nbytes for q in params if q.grad_sample is not None))
        original(params, k)

    monkeypatch.setattr(dp_diffusion, "_mean_over_draws", counting)
    cfg, gen = DiffusionConfig(unet="tiny", image_size=16), torch.Generator().manual_seed(0)
    task = image_denoising(torch.rand((8, 3, 16, 16), generator=gen) * 2 - 1, torch.randint(0, 10, (8,), generator=gen),
                           noise_scheduler(cfg), None)
    for physical in (None, 4):
        model = build_unet(cfg, 10, 16)
        dp = DpConfig(noise_multiplicity=2, epochs1=0, split_step=1000, batch_size2=8, max_grad_norm=1.0,
                      physical_batch_size=physical)
        dp_diffusion.train_phases(model, task, accountant.Plan(1.0, 0, 1.0, 1, 1.0, 0.0, 0.0), dp, 1000,
                                  torch.device("cpu"), gen)
    gradient = sum(q.nbytes for q in model.parameters() if q.requires_grad)  # what the plain step's gradient holds
    assert held == [2 * 8 * gradient, 2 * 4 * gradient, 2 * 4 * gradient]
