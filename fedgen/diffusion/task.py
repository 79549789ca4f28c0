"""The diffusion task: a class-conditional image DDPM scored by FID, IS and class fidelity of its DDIM samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.utils import save_image

from fedgen.config import ExperimentConfig
from fedgen.data import Federation
from fedgen.diffusion import build_unet, pruning, sample
from fedgen.diffusion.evaluate import GenerativeScores, reference_classifier
from fedgen.tasks import Headline, Task

PARAMS, MACS = "params (M)", "MACs (M)"
"""The size of the U-Net scored: its parameters, and the multiply-accumulates of one forward pass of one image."""


def image_size(cfg: ExperimentConfig, fed: Federation) -> int:
    return cfg.diffusion.image_size or fed.image_shape[-1]


def unet_fn(cfg: ExperimentConfig, fed: Federation):
    """The run's U-Net builder; with dp-promise's phase I (private clients, ``dp.epochs1`` > 0) the U-Net has the
    null label for the timesteps from ``dp.split_step`` on."""
    phase1 = cfg.dp.private and cfg.dp.epochs1 > 0
    return lambda: build_unet(cfg.diffusion, fed.num_classes, image_size(cfg, fed),
                              null_from=cfg.dp.split_step if phase1 else None)


def real_sample(labels: np.ndarray, num_classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of ``per_class`` images of each class drawn at random (seeded): as many real images as a round
    samples, from every domain (a split is ordered by domain, so its first images of a class are all of one)."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(idx, min(per_class, len(idx)), replace=False)
             for idx in (np.flatnonzero(labels == c) for c in range(num_classes))]
    return np.sort(np.concatenate(picks))


class DiffusionTask(Task):
    """The global U-Net, scored every ``evaluation.every`` rounds (round 0, the untrained model, and the last round
    always): ``evaluation.samples_per_class`` DDIM samples per class, with a noise seed fixed for the run, against
    the global test split; with its size (parameters, MACs), which pruning changes. Writes a grid of the samples (a
    row per class) to samples/round-<r>.png.

    ``extras`` (into summary.json): the extractor, the reference classifier's test accuracy, and the calibration
    floor: the scores of as many public-split images as a round samples (``samples_per_class`` of each class) against
    the test split: real vs real, the best FID this extractor gives at that sample size.
    """

    def __init__(self, ctx, strategy=None) -> None:
        cfg, fed = ctx.cfg, ctx.fed
        self.cfg, self.fed, self.device, self.out_dir = cfg, fed, ctx.device, Path(ctx.out_dir)
        self.model_fn = ctx.model_fn
        ev = cfg.evaluation
        reference, accuracy = reference_classifier(fed.public, fed.test, fed.num_classes, ev, ctx.device)
        self.scorer = GenerativeScores(fed.test, reference, image_size(cfg, fed), ev.inception, cfg.data.dataset,
                                       ev.batch_size)
        name = self.scorer.extractor
        self.headline = Headline(f"fid[{name}]", higher_is_better=False)
        self.columns = (f"fid[{name}]", f"is[{name}]", "class-fidelity", PARAMS, MACS)
        self.report = self.columns[1:]
        x, y = fed.public.tensors(real_sample(fed.public.labels, fed.num_classes, ev.samples_per_class))
        floor = self.scorer(self.scorer.as_generated(x), y)
        self.extras = {"evaluation": {"extractor": name, "reference_test_accuracy": accuracy,
                                      "floor_public_vs_test": floor, "samples_per_class": ev.samples_per_class,
                                      "sampling_steps": ev.sampling_steps}}
        self.labels = torch.arange(fed.num_classes).repeat_interleave(ev.samples_per_class)

    def scored(self, server_round: int) -> bool:
        return server_round in (0, self.cfg.rounds) or server_round % self.cfg.evaluation.every == 0

    def scores(self, state: dict[str, torch.Tensor], grid: Path | None = None) -> dict[str, float]:
        model = self.model_fn()
        model.load_state_dict(state)
        ev = self.cfg.evaluation
        images = sample(model, self.cfg.diffusion, self.labels, ev.sampling_steps, self.cfg.seed, self.device,
                        ev.batch_size)
        if grid is not None:
            grid.parent.mkdir(parents=True, exist_ok=True)
            per_class = min(8, ev.samples_per_class)
            rows = images.view(self.fed.num_classes, ev.samples_per_class, *images.shape[1:])[:, :per_class]
            save_image(rows.flatten(0, 1), grid, nrow=per_class, padding=1)
        macs, params = pruning.size(model)
        return {**self.scorer(images, self.labels), PARAMS: params / 1e6, MACS: macs / 1e6}

    def evaluate(self, server_round: int, state: dict[str, torch.Tensor]) -> dict[str, float]:
        if not self.scored(server_round):
            return {}
        return self.scores(state, self.out_dir / "samples" / f"round-{server_round:03d}.png")

    def final_models(self, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {"unet": state}
