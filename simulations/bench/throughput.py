"""``fedgen bench throughput``, local training: fedgen.train.train against a bare training loop."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from simulations.bench.harness import DIGITS


def throughput(work: Path, epochs: int = 3) -> dict:
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
