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
from collections.abc import Callable
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from simulations.procs import descendants, stop

CONFIGS = Path(__file__).parent / "configs"
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
        "sd_v1_512_gpu": _sd_v1_generation(work) if torch.cuda.is_available() else "not measured: no GPU",
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


def sd_v1_architecture():
    """Stable Diffusion v1.x's architecture with random weights (speed does not depend on the weights, and none can
    be downloaded here): CLIP ViT-L/14's text encoder (12 layers, 768 wide, 77 tokens), the 4-level KL autoencoder
    (128/256/512/512) and the conditional U-Net (320/640/1280/1280, cross-attention 768, 64x64 latents)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from fedgen.foundation.tiny import clip_tokenizer

    tokenizer = clip_tokenizer(["a photo of a digit"] * 5, 77)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2, sample_size=512)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # diffusers' defaults
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _sd_v1_generation(work: Path, images: int = 16, steps: int = 50, batch: int = 8) -> dict:
    """SD v1.x's architecture at 512x512 on CUDA, float16, DDIM 50 steps, guidance 7.5: ours against bare diffusers."""
    from diffusers import StableDiffusionPipeline

    from fedgen.foundation import Generator

    folder = work / "sd-v1-architecture"
    pipe = sd_v1_architecture()
    unet_params = sum(p.numel() for p in pipe.unet.parameters())
    pipe.save_pretrained(folder)
    del pipe
    ours = Generator(str(folder), "ddim", torch.device("cuda"), torch.float16)
    embeds = torch.randn(images // batch, 77, 768)
    ours.generate(embeds[:1], 1, 2, 7.5, 512, batch, seed=0, progress=False)  # warm-up
    torch.cuda.synchronize()
    t = time.perf_counter()
    ours.generate(embeds, batch, steps, 7.5, 512, batch, seed=0, progress=False)
    torch.cuda.synchronize()
    ours_s = time.perf_counter() - t
    del ours
    bare = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float16, safety_checker=None,
                                                   requires_safety_checker=False).to("cuda")
    bare.set_progress_bar_config(disable=True)
    jobs = embeds.repeat_interleave(batch, dim=0).to("cuda", torch.float16)
    negative = torch.zeros_like(jobs[:batch])
    bare(prompt_embeds=jobs[:batch], negative_prompt_embeds=negative, num_inference_steps=2, output_type="np")
    torch.cuda.synchronize()
    t = time.perf_counter()
    for start in range(0, images, batch):
        bare(prompt_embeds=jobs[start : start + batch], negative_prompt_embeds=negative, num_inference_steps=steps,
             guidance_scale=7.5, height=512, width=512, output_type="np")
    torch.cuda.synchronize()
    bare_s = time.perf_counter() - t
    return {
        "setup": f"SD v1.x architecture (random weights; U-Net {unet_params / 1e6:.0f}M parameters), 512x512, "
                 f"{images} images, DDIM {steps} steps, guidance 7.5, batch {batch}, float16, "
                 f"{torch.cuda.get_device_name(0)}",
        "ours_images_per_s": images / ours_s, "bare_diffusers_images_per_s": images / bare_s,
        "ratio_ours_over_bare_time": ours_s / bare_s,
    }


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


# --- 6. diffusion training and sampling ----------------------------------------------------------------------------
def _diffusion_speed(unet: str, device: torch.device, autocast: str, train_images: int, batch: int,
                     sample_images: int, sample_steps: int) -> dict:
    """fedgen.diffusion.train (what a diffusion client runs each round) and DDIM sampling (what the server's
    evaluation runs), on random 32x32 images of 10 classes, timed after a warm-up."""
    import numpy as np

    from fedgen.config import DiffusionConfig
    from fedgen.data.images import ImageSet
    from fedgen.diffusion import build_unet, sample, train

    cfg = DiffusionConfig(unet=unet, batch_size=batch, autocast=autocast)
    rng = np.random.default_rng(0)
    data = ImageSet(rng.integers(0, 256, (train_images, 32, 32, 3), dtype=np.uint8),
                    rng.integers(0, 10, train_images), np.zeros(train_images, dtype=np.int64))
    model = build_unet(cfg, 10, 32)
    params = sum(p.numel() for p in model.parameters())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    train(model, data.subset(np.arange(batch)), cfg, device, seed=0)  # warm-up (kernels, allocator)
    sync()
    t = time.perf_counter()
    train(model, data, cfg, device, seed=1)
    sync()
    train_s = time.perf_counter() - t
    labels = torch.arange(sample_images) % 10
    sample(model, cfg, labels[:2], 1, 0, device)
    sync()
    t = time.perf_counter()
    sample(model, cfg, labels, sample_steps, 0, device, batch_size=250)
    sync()
    sample_s = time.perf_counter() - t
    return {"unet": unet, "parameters": params, "device": str(device), "autocast": autocast,
            "train_images_per_s": train_images / train_s,
            "sample_images_per_s": sample_images / sample_s, "sampling_steps": sample_steps}


def diffusion(out: Path, work: Path) -> dict:
    """Local diffusion training and DDIM sampling for the 'digits' U-Net (the embedded benchmark's) and the 'paper'
    U-Net (FedPhD's 35.7M), on CPU and, when there is one, on the GPU (float32, then bf16 autocast)."""
    cpu = torch.device("cpu")
    points = [
        _diffusion_speed("digits", cpu, "none", 512, 128, 100, 20),
        _diffusion_speed("paper", cpu, "none", 64, 32, 10, 5),
    ]
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        for unet in ("digits", "paper"):
            for autocast in ("none", "bf16"):
                points.append(_diffusion_speed(unet, gpu, autocast, 5120, 128, 1000, 100))
    for p in points:
        print(f"[bench diffusion] {p}", flush=True)
    return {
        "setup": "fedgen.diffusion.train (Adam, batch 128 on the GPU, 32 for the paper U-Net on CPU) and DDIM "
                 "sampling (batch 250) on random 32x32 RGB images of 10 classes, after a warm-up",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not measured: no GPU",
        "points": points,
    }


def dp_step(out: Path, work: Path, batch: int = 64, dim: int = 64, steps: int = 60, repeats: int = 3) -> dict:
    """dp-promise's phase II step (fedgen.privacy.dp_diffusion: opacus' per-sample gradients, clipping and noise)
    against the same step without DP: the same MLP denoiser, batch, K and Adam, alternated ``repeats`` times (the
    medians), for noise multiplicity 1 and 4 (K = 4: the denoiser sees a (batch, 4, d) tensor)."""
    from fedgen.config import DpConfig, LdmlrConfig
    from fedgen.diffusion import features as fd
    from fedgen.privacy import dp_diffusion

    torch.set_num_threads(1)
    ld = LdmlrConfig(beta_schedule="linear", mlp_width=128)  # private_digits.yaml's denoiser
    scheduler = fd.feature_scheduler(ld)
    gen = torch.Generator().manual_seed(0)
    zn = torch.rand((batch, dim), generator=gen) * 2 - 1
    y = torch.randint(0, 10, (batch,), generator=gen)
    points = []
    for k in (1, 4):
        dp = DpConfig(noise_multiplicity=k, epochs1=0, epochs2=steps, batch_size2=batch, max_grad_norm=1.0)
        timings: dict[str, list[float]] = {"dp": [], "plain": []}
        for _ in range(repeats):
            for kind, sigma in (("dp", 1.0), ("plain", None)):
                model = fd.build_feature_diffusion(ld, dim, 10, null_from=900)
                p = dp_diffusion.Plan(1.0, 0, 1.0, steps, sigma, 0.0, 0.0)
                t = time.perf_counter()
                dp_diffusion.train_two_phase(model, zn, y, p, dp, scheduler, None, torch.device("cpu"), gen)
                timings[kind].append((time.perf_counter() - t) / steps)
        dp_s, plain_s = statistics.median(timings["dp"]), statistics.median(timings["plain"])
        points.append({"noise_multiplicity": k, "dp_step_s": dp_s, "plain_step_s": plain_s, "ratio": dp_s / plain_s})
        print(f"[bench dp-step] K={k}: DP {dp_s * 1e3:.1f} ms, plain {plain_s * 1e3:.1f} ms, "
              f"ratio {dp_s / plain_s:.2f}", flush=True)
    return {"setup": f"phase II steps of the feature denoiser (MLP 128 x 3, private_digits.yaml's) on {batch} "
                     f"features of dimension {dim}, {steps} steps a timing, one CPU thread, Adam; DP: opacus hooks, "
                     "clip 1, sigma 1",
            "points": points}


def _peak_extra(run: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """Seconds ``run`` takes and the peak memory it adds (bytes): CUDA's peak allocation on a GPU; on CPU the
    process's peak resident set (VmHWM, reset through /proc/self/clear_refs) over its resident set before."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")
        before = _proc_status("VmRSS")
    t = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter() - t, float(torch.cuda.max_memory_allocated() - before)
    return time.perf_counter() - t, float(_proc_status("VmHWM") - before)


def _unmap_freed_blocks() -> None:
    """glibc: serve blocks of 64 KiB and more by mmap and give them back on free (a fixed threshold), so that the
    resident set follows what tensors hold rather than what the allocator keeps."""
    import ctypes

    ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD


def _proc_status(key: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1]) * 1024


def dp_images(out: Path, work: Path, batch: int = 64, steps: int = 3, repeats: int = 3,
              multiplicities: tuple[int, ...] = (1, 4)) -> dict:
    """dp-promise's phase II step on the image U-Net (fedgen.diffusion.image_denoising through
    fedgen.privacy.dp_diffusion: opacus' functorch per-sample gradients, clipping and noise) against the same step
    without DP (same U-Net, batch, K, Adam), and with DP in physical chunks of 16 (BatchMemoryManager's scheme):
    seconds per step and the peak memory a round of ``steps`` steps adds, medians over ``repeats`` alternations.
    The digits U-Net at 16x16, on CPU and, when there is one, on the GPU."""
    from fedgen.config import DiffusionConfig, DpConfig
    from fedgen.diffusion import build_unet, image_denoising, noise_scheduler
    from fedgen.privacy import dp_diffusion

    cfg = DiffusionConfig(unet="digits", image_size=16)
    scheduler = noise_scheduler(cfg)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand((batch, 3, 16, 16), generator=gen) * 2 - 1
    y = torch.randint(0, 10, (batch,), generator=gen)
    task = image_denoising(x0, y, scheduler, None)
    _unmap_freed_blocks()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    variants = {"plain": (None, None), "dp": (1.0, None), "dp, chunks of 16": (1.0, 16)}
    points = []
    for device in devices:
        for k in multiplicities:
            figures: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
            for rep in range(repeats + 1):  # the first pass warms up
                for name, (sigma, physical) in variants.items():
                    dp = DpConfig(noise_multiplicity=k, epochs1=0, split_step=1000, batch_size2=batch,
                                  max_grad_norm=1.0, physical_batch_size=physical)
                    p = dp_diffusion.Plan(1.0, 0, 1.0, steps, sigma, 0.0, 0.0)
                    model = build_unet(cfg, 10, 16).to(device)
                    seconds, extra = _peak_extra(partial(dp_diffusion.train_phases, model, task, p, dp, 1000, device,
                                                         torch.Generator().manual_seed(rep)), device)
                    if rep:
                        figures[name].append((seconds / steps, extra))
            med = {n: (statistics.median(s for s, _ in f), statistics.median(m for _, m in f))
                   for n, f in figures.items()}
            point = {"device": str(device), "noise_multiplicity": k, "batch": batch,
                     **{f"{n} step_s": v[0] for n, v in med.items()},
                     **{f"{n} peak_extra_mb": v[1] / 2**20 for n, v in med.items()},
                     "dp/plain time": med["dp"][0] / med["plain"][0],
                     "dp/plain memory": med["dp"][1] / max(med["plain"][1], 1.0)}
            points.append(point)
            print(f"[bench dp-images] {device} K={k}: step plain {med['plain'][0]:.3f} s, DP {med['dp'][0]:.3f} s "
                  f"({point['dp/plain time']:.2f}x), DP in chunks of 16 {med['dp, chunks of 16'][0]:.3f} s; peak "
                  f"extra memory plain {med['plain'][1] / 2**20:.0f} MB, DP {med['dp'][1] / 2**20:.0f} MB, chunks "
                  f"{med['dp, chunks of 16'][1] / 2**20:.0f} MB", flush=True)
    return {"setup": f"phase II steps of the digits U-Net (0.70M parameters) on {batch} random 16x16 images, {steps} "
                     "steps a timing, Adam, clip 1, sigma 1; peak memory: CUDA's peak allocation, or on CPU the "
                     "process's peak resident set above the set before the steps (freed blocks given back to the "
                     "system: glibc's mmap threshold fixed at 64 KiB)",
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not measured: no GPU",
            "points": points}


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
            figures = BENCHMARKS[name](out_dir, Path(tmp))
            write(out_dir, name, {**figures, "bench_seconds": time.perf_counter() - t})
    return 0
