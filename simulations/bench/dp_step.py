"""``fedgen bench dp-step``: dp-promise's phase II step on the feature denoiser, with DP against without."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch


def dp_step(work: Path, batch: int = 64, dim: int = 64, steps: int = 60, repeats: int = 3) -> dict:
    """dp-promise's phase II step (fedgen.privacy.dp_diffusion: opacus' per-sample gradients, clipping and noise)
    against the same step without DP: the same MLP denoiser, batch, K and Adam, alternated ``repeats`` times (the
    medians), for noise multiplicity 1 and 4 (K = 4: the denoiser sees a (batch, 4, d) tensor)."""
    from fedgen.config import DpConfig, LdmlrConfig
    from fedgen.diffusion import features as fd
    from fedgen.privacy import accountant, dp_diffusion

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
                p = accountant.Plan(1.0, 0, 1.0, steps, sigma, 0.0, 0.0)
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
