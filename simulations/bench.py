"""`make bench` / `fedgen bench`: figures, not pass/fail tests.

Each benchmark prints its figures and writes ``<out>/<name>.json`` with the machine it ran on. Ratios are measured
side by side in one run, because the machines are shared and noisy. Simulations run as ``fedgen run`` subprocesses,
so the memory of the whole process tree (the driver, Ray's GCS and raylet, every worker) is sampled from /proc.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch

from simulations.procs import descendants

CONFIGS = Path(__file__).parent / "configs"
DIGITS = str(CONFIGS / "digits_domains.yaml")


# --- the machine and the results ------------------------------------------------------------------------------------
def machine() -> dict:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kb = int(next(ln for ln in meminfo if ln.startswith("MemTotal")).split()[1])
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    libs = ["torch", "flwr", "ray", "transformers", "diffusers"]
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(), "python": platform.python_version(), "cpu_cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1), "gpu": gpu, "torch_threads": torch.get_num_threads(),
        "versions": {name: version(name) for name in libs},
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
    """``fedgen run`` in a subprocess; returns its wall time, its rounds and the peak PSS of its process tree."""
    cmd = [sys.executable, "-m", "simulations.cli", "run", config, "--out", str(out)]
    for o in overrides:
        cmd += ["--set", o]
    out.mkdir(parents=True, exist_ok=True)
    peak, t0 = 0, time.perf_counter()
    with open(out / "bench.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            peak = max(peak, tree_pss_bytes(proc.pid))
            time.sleep(sample_s)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}; see {out / 'bench.log'}")
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    return {"wall_s": wall, "rounds": rounds, "summary": summary, "peak_pss_bytes": peak}


def _round_seconds(rounds: list[dict], skip_first: int = 1) -> list[float]:
    """Seconds of each federated round (round 0, the initial evaluation, left out), the first ``skip_first`` too."""
    return [r["seconds"] for r in rounds if r["round"] > skip_first]


# --- 1. simulation overhead -----------------------------------------------------------------------------------------
def bare_fedavg_rounds(cfg, rounds: int) -> list[float]:
    """FedAvg's arithmetic in one process: the same clients, local steps, data and global evaluation, no Flower."""
    from fedgen.data import load_federation
    from fedgen.models import build_model
    from fedgen.train import client_seed, evaluate, resolve_device, train

    fed = load_federation(cfg.data, cfg.seed)
    device = resolve_device(cfg.device)  # the device the virtual clients use

    def new_model():
        return build_model(cfg.model.name, fed.num_classes, cfg.model.norm, fed.image_shape[-1])

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


def overhead(out: Path, work: Path, rounds: int = 5) -> dict:
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


# --- 2. scale -------------------------------------------------------------------------------------------------------
def scale(out: Path, work: Path, sizes=(100, 1000, 5000), sampled: int = 10, rounds: int = 3) -> dict:
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


# --- 3. bytes -------------------------------------------------------------------------------------------------------
def oscar_upload_bytes(classes: int, seq: int, hidden: int, dtype: str) -> int:
    """The bytes of one OSCAR reply (encodings, class ids, timings) for a text encoder of this shape."""
    from fedgen import oscar
    from fedgen.comm import record_bytes

    means = {c: (torch.zeros(seq, hidden), 100) for c in range(classes)}
    return record_bytes(oscar.reply_content(means, dtype, caption_seconds=0.0, encode_seconds=0.0))


def bytes_(out: Path, work: Path) -> dict:
    from flwr.app import ArrayRecord

    from fedgen.foundation.embedded import MAX_TOKENS
    from fedgen.models import build_model
    from strategies import METHODS

    per_strategy = {}
    for name in [n for n, m in METHODS.items() if not m.foundation]:  # those the digits config runs as it is
        res = run_fedgen(DIGITS, [f"strategy.name={name}", "rounds=2"], work / f"bytes-{name}")
        s = res["summary"]
        n = s["num_clients"]
        fed_rounds = [r for r in res["rounds"] if r["round"] > 0]
        per_strategy[name] = {
            "up_per_client_per_round": sum(r["bytes_up"] for r in fed_rounds) / len(fed_rounds) / n,
            "down_per_client_per_round": sum(r["bytes_down"] for r in fed_rounds) / len(fed_rounds) / n,
        }
    cnn = ArrayRecord(build_model("cnn", 10).state_dict()).count_bytes()
    resnet = ArrayRecord(build_model("resnet18", 10).state_dict()).count_bytes()
    embedded = oscar_upload_bytes(10, MAX_TOKENS, 32, "float16")  # the embedded profile's CLIP: 16 tokens x 32
    sd = oscar_upload_bytes(10, 77, 768, "float16")  # Stable Diffusion v1.x's CLIP ViT-L/14: 77 tokens x 768
    return {
        "setup": "digits-domains, 6 clients, 2 rounds per strategy; OSCAR's reply measured on its wire format "
                 "(10 classes, float16) for the embedded text encoder and for SD v1.x's",
        "per_strategy": per_strategy,
        "fedavg_upload_bytes": {"cnn": cnn, "resnet18": resnet},
        "oscar_upload_bytes": {"embedded_16x32": embedded, "sd_v1_77x768": sd},
        "oscar_pct_of_upload": {
            "embedded_vs_cnn": 100 * embedded / cnn, "embedded_vs_resnet18": 100 * embedded / resnet,
            "sd_v1_vs_resnet18": 100 * sd / resnet,
        },
    }


# --- 4. generation --------------------------------------------------------------------------------------------------
def generation(out: Path, work: Path, images: int = 200, steps: int = 20, batch: int = 100) -> dict:
    """Our Generator against the bare diffusers pipeline, same model, prompt embeddings, steps and batch."""
    from diffusers import StableDiffusionPipeline

    from fedgen.foundation import Generator
    from fedgen.foundation.embedded import MAX_TOKENS, SIZE
    from fedgen.foundation.tiny import clip_tokenizer, sd_pipeline

    # speed does not depend on the weights: the embedded architecture, untrained, through the same loading path
    folder = work / "generation-model"
    sd_pipeline(clip_tokenizer(["a white digit seven"] * 5, MAX_TOKENS), SIZE).save_pretrained(folder)
    ours = Generator(str(folder), "ddim", torch.device("cpu"), torch.float32)
    embeds = torch.randn(images // 10, MAX_TOKENS, ours.pipe.text_encoder.config.hidden_size)
    ours.generate(embeds[:1], 2, 2, 3.0, SIZE, batch, seed=0, progress=False)  # warm-up, for both (same process)
    t = time.perf_counter()
    ours.generate(embeds, 10, steps, 3.0, SIZE, batch, seed=0, progress=False)
    ours_s = time.perf_counter() - t
    bare = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    bare.set_progress_bar_config(disable=True)
    negative = ours.empty_embedding()
    jobs = embeds.repeat_interleave(10, dim=0)
    t = time.perf_counter()
    with torch.no_grad():
        for start in range(0, images, batch):
            b = jobs[start : start + batch]
            bare(prompt_embeds=b, negative_prompt_embeds=negative.expand(len(b), -1, -1), num_inference_steps=steps,
                 guidance_scale=3.0, height=SIZE, width=SIZE, output_type="np")
    bare_s = time.perf_counter() - t
    return {
        "setup": f"embedded architecture ({SIZE}x{SIZE} images, 4x8x8 latents), {images} images, DDIM {steps} steps, "
                 f"guidance 3.0, batch {batch}, CPU float32",
        "ours_images_per_s": images / ours_s, "bare_diffusers_images_per_s": images / bare_s,
        "ratio_ours_over_bare_time": ours_s / bare_s,
        "gpu_images_per_s": _gpu_generation(folder, embeds, steps, batch) if torch.cuda.is_available()
        else "not measured: no GPU",
    }


def _gpu_generation(folder: Path, embeds: torch.Tensor, steps: int, batch: int) -> float:
    """The same generation on CUDA, float16 (timed after a warm-up)."""
    from fedgen.foundation import Generator
    from fedgen.foundation.embedded import SIZE

    gpu = Generator(str(folder), "ddim", torch.device("cuda"), torch.float16)
    gpu.generate(embeds[:1], 2, 2, 3.0, SIZE, batch, seed=0, progress=False)
    torch.cuda.synchronize()
    t = time.perf_counter()
    gpu.generate(embeds, 10, steps, 3.0, SIZE, batch, seed=0, progress=False)
    torch.cuda.synchronize()
    return len(embeds) * 10 / (time.perf_counter() - t)


# --- 5. local training throughput -----------------------------------------------------------------------------------
def throughput(out: Path, work: Path, epochs: int = 3) -> dict:
    """fedgen.train.train (what the finetune role runs) against a bare loop over the same tensors."""
    from fedgen.config import load_config
    from fedgen.data import load_federation
    from fedgen.models import build_model
    from fedgen.train import train

    cfg = load_config(DIGITS)
    fed = load_federation(cfg.data, cfg.seed)
    data = fed.client(0)[0]
    tc = cfg.train
    ours, bare = [], []
    for epoch in range(epochs):
        model = build_model("cnn", fed.num_classes)
        t = time.perf_counter()
        train(model, data, tc, torch.device("cpu"), seed=epoch)
        ours.append(len(data) / (time.perf_counter() - t))

        model = build_model("cnn", fed.num_classes)
        x, y = data.tensors()
        opt = torch.optim.SGD(model.parameters(), lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)
        model.train()
        t = time.perf_counter()
        for idx in torch.randperm(len(y)).split(tc.batch_size):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        bare.append(len(data) / (time.perf_counter() - t))
    return {
        "setup": f"one client's data ({len(data)} images, 32x32 RGB), small CNN, batch {tc.batch_size}, SGD, "
                 f"{epochs} epochs alternating ours and bare, CPU",
        "ours_images_per_s": statistics.median(ours), "bare_images_per_s": statistics.median(bare),
        "ratio_bare_over_ours": statistics.median(bare) / statistics.median(ours),
    }


BENCHMARKS = {"overhead": overhead, "scale": scale, "bytes": bytes_, "generation": generation, "throughput": throughput}


def main(names: list[str], out: str) -> int:
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    out_dir = Path(out)
    with tempfile.TemporaryDirectory(prefix="fedgen-bench-") as tmp:
        for name in names or list(BENCHMARKS):
            t = time.perf_counter()
            figures = BENCHMARKS[name](out_dir, Path(tmp))
            write(out_dir, name, {**figures, "bench_seconds": time.perf_counter() - t})
    return 0
