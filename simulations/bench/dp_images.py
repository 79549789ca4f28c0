"""``fedgen bench dp-images``: dp-promise's phase II step on the image U-Net, plain, with DP and with DP in physical
chunks: seconds per step and the peak memory it adds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch


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


def dp_images(work: Path, batch: int = 64, steps: int = 3, repeats: int = 3,
              multiplicities: tuple[int, ...] = (1, 4)) -> dict:
    """dp-promise's phase II step on the image U-Net (fedgen.diffusion.image_denoising through
    fedgen.privacy.dp_diffusion: opacus' functorch per-sample gradients, clipping and noise) against the same step
    without DP (same U-Net, batch, K, Adam), and with DP in physical chunks of 16 (BatchMemoryManager's scheme):
    seconds per step and the peak memory a round of ``steps`` steps adds, medians over ``repeats`` alternations.
    The digits U-Net at 16x16, on CPU and, when there is one, on the GPU."""
    from fedgen.config import DiffusionConfig, DpConfig
    from fedgen.diffusion import build_unet, image_denoising, noise_scheduler
    from fedgen.privacy import accountant, dp_diffusion

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
                    p = accountant.Plan(1.0, 0, 1.0, steps, sigma, 0.0, 0.0)
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
