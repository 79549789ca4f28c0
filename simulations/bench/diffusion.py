"""``fedgen bench diffusion``: images per second of local U-Net training and of DDIM sampling."""

from __future__ import annotations

import time
from pathlib import Path

import torch


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


def diffusion(work: Path) -> dict:
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
