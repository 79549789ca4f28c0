"""The benchmark harness: its measurements are real and land in JSON with the machine (figures are not asserted)."""

import json
import os

from simulations import bench


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


def test_the_private_unet_step_is_timed_and_its_memory_measured(tmp_path):
    """One alternation, one step: the three variants (plain, DP, DP in chunks) each get a time and a peak; DP holds
    per-sample gradients, so it needs more memory than the plain step."""
    import subprocess
    import sys

    # a process of its own: the benchmark fixes glibc's mmap threshold for its whole process, and measures that
    # process's resident set
    code = ("import json; from pathlib import Path; from simulations import bench; print(json.dumps("
            "bench.dp_images(Path('.'), Path('.'), batch=8, steps=1, repeats=1, multiplicities=(2,))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    cpu = [p for p in figures["points"] if p["device"] == "cpu"]
    assert [p["noise_multiplicity"] for p in cpu] == [2]
    for p in cpu:
        assert p["plain step_s"] > 0 and p["dp step_s"] > 0 and p["dp, chunks of 16 step_s"] > 0
        assert p["dp peak_extra_mb"] > p["plain peak_extra_mb"]
