"""The canary audit: a client's local training replayed with and without a crafted canary, and the empirical
epsilon lower bound against the accountant's epsilon of the rounds replayed."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict

import numpy as np
import torch

from fedgen.data import ImageSet
from fedgen.diffusion import train as train_unet
from fedgen.diffusion import train_private as train_unet_private
from fedgen.privacy import audit, dp_diffusion, gdp
from fedgen.train import client_seed
from simulations.audit.harness import Settings, Target

CANARY_TIMESTEPS = (10, 100, 500, 950)
"""The canary's scores: one in each part of phase II and one in phase I (t >= dp.split_step's default 900)."""


REFERENCES = 8
"""Crafted points like the canary, never trained on: the canary's score is their mean error minus its own, which
takes out how well the model happens to denoise such points at all (the run's training randomness)."""


def _crafted(target: Target, data: ImageSet, seed: int) -> tuple[ImageSet | torch.Tensor, int]:
    """The canary (first) and the references: random signs at the data's bound (corners of [-1, 1]^d for
    features; images of random black and white pixels), labelled as the class the client holds least of (one it
    does not hold at all, where there is one: then only the canary trains that class's embedding)."""
    rng = np.random.default_rng(seed + 12345)
    label = int(np.argmin(data.label_histogram(target.fed.num_classes)))
    n = 1 + REFERENCES
    if target.image:
        pixels = (rng.integers(0, 2, (n, *data.images.shape[1:])) * 255).astype(np.uint8)
        return ImageSet(pixels, np.full(n, label), np.zeros(n, dtype=np.int64)), label
    d = target.model.diffusion.mean.numel()
    return torch.from_numpy(rng.choice([-1.0, 1.0], (n, d))).float(), label


def canaries(target: Target, s: Settings, log=print) -> dict:
    """Replays ``--client``'s (default 0) local training ``s.canary_runs`` times with a canary and as many without;
    the bound, against the accountant's epsilon of the rounds replayed."""
    cfg, pid = target.cfg, target.client or 0
    data = target.members(pid)
    crafted, label = _crafted(target, data, cfg.seed)
    p = target.plan(len(data))  # the same plan with and without: Poisson rates do not change with one example
    if target.image:
        x_c, y_c = target.inputs(crafted)
        canary = crafted.subset(np.array([0]))
    else:
        z, y = target.inputs(data)
        x_c, y_c = crafted, torch.full((len(crafted),), label)
        z_in, y_in = torch.cat([z, x_c[:1]]), torch.cat([y, y_c[:1]])
    start = copy.deepcopy(target.generator).cpu()

    rounds = s.canary_rounds or cfg.rounds

    def train_and_score(with_canary: bool, run: int) -> np.ndarray:
        model = copy.deepcopy(start)
        for rnd in range(1, rounds + 1):
            seed = client_seed(cfg.seed * 7919 + run, rnd, pid)
            if target.image:
                run_data = ImageSet.concat([data, canary]) if with_canary else data
                if cfg.dp.private:
                    train_unet_private(model, run_data, cfg, p, target.device, seed)
                else:
                    train_unet(model, run_data, cfg.diffusion, target.device, seed, rnd)
            else:
                zz, yy = (z_in, y_in) if with_canary else (z, y)
                dp_diffusion.train_two_phase(model, zz, yy, p, cfg.dp, target.scheduler, cfg.ldmlr.snr_gamma,
                                             target.device, torch.Generator().manual_seed(seed))
        errs = target.errors(model, x_c, y_c, CANARY_TIMESTEPS, 16, s.batch_size, s.seed)
        return (errs[1:].mean(0) - errs[0]).numpy()

    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done % max(1, total // 10) == 0 or done == total:
            log(f"  canary runs {done}/{total} ({time.perf_counter() - t0:.0f} s)")

    result = audit.canary_audit(train_and_score, s.canary_runs, cfg.dp.delta, s.confidence, progress)
    mu = math.sqrt(rounds) * math.hypot(p.mu1, p.mu2)  # what the client's ledger charges for these rounds
    replayed_eps = gdp.epsilon_of(mu, cfg.dp.delta) if p.sigma is not None else math.inf
    return {**asdict(result), "client": pid, "client_examples": len(data), "canary_label": label,
            "runs": s.canary_runs, "rounds": rounds, "timestep": CANARY_TIMESTEPS[result.column],
            "epsilon_replayed": replayed_eps, "sigma": p.sigma, "seconds": time.perf_counter() - t0,
            "exceeds": bool(result.epsilon_lb > replayed_eps)}
