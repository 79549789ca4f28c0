"""LDMLR: a classifier whose features a conditional diffusion model learns, so that pseudo-features of rare classes
train its head (LDMLR, Han et al., 2024). The math is :mod:`fedgen.diffusion.features`; this module trains and scores.

- ``ce``: the classifier alone (the train section), the plain cross-entropy baseline.
- ``three_stage`` (the official code): (1) E + G on the data; (2) the denoiser on frozen features; (3) G alone on real
  + generated features (Adam).
- ``e2e`` (fedgen's variant): {E, G, theta} in one loop, L_total = L_real + lambda_sem L_sem + gamma_ge L_ge, by
  schedule A (joint, semantic weights warmed up), B (alternating diffusion / classifier steps) or C (progressive).

The task (``task: ldmlr``) scores the classifier on the balanced global test split, overall and per band of classes
(many / medium / few by training frequency), and the denoiser by the Frechet distance of its pseudo-features to the
real test features, per band (in the classifier's own feature space), and by G's accuracy on them (class fidelity).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from fedgen import models
from fedgen.config import ExperimentConfig, LdmlrConfig
from fedgen.data import Federation
from fedgen.data.images import ImageSet
from fedgen.diffusion import features as fd
from fedgen.tasks import ClassifierTask
from fedgen.train import Penalty, TrainResult, fit, loader


class FeatureClassifier(nn.Module):
    """The classifier (E then G, G its last linear layer) and the feature diffusion model theta, as one module whose
    forward is the classifier's (so every classifier tool scores it)."""

    def __init__(self, classifier: nn.Module, diffusion: fd.FeatureDiffusion) -> None:
        super().__init__()
        self.classifier, self.diffusion = classifier, diffusion

    @property
    def head(self) -> nn.Linear:
        return head_of(self.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z = E(x), G(z)): the head's input, caught on the way."""
        caught = []
        hook = self.head.register_forward_pre_hook(lambda _, args: caught.append(args[0]))
        try:
            logits = self.classifier(x)
        finally:
            hook.remove()
        return caught[0], logits


def head_of(classifier: nn.Module) -> nn.Linear:
    linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(classifier).__name__} has no linear layer to serve as the head G")
    return linears[-1]


def model_fn(cfg: ExperimentConfig, fed: Federation, null_from: int | None = None) -> Callable[[], FeatureClassifier]:
    """The classifier and its feature diffusion model (with ``null_from``: a null label for the unconditional
    timesteps, :func:`fedgen.diffusion.features.build_feature_diffusion`)."""

    def build() -> FeatureClassifier:
        classifier = models.classifier(cfg, fed)
        dim = head_of(classifier).in_features
        return FeatureClassifier(classifier, fd.build_feature_diffusion(cfg.ldmlr, dim, fed.num_classes, null_from))

    return build


@torch.no_grad()
def extract(model: FeatureClassifier, data: ImageSet, batch_size: int, device: torch.device):
    """Features and labels of a dataset (eval mode)."""
    model.to(device).eval()
    zs = [model.features(x.to(device))[0].cpu() for x, _ in loader(data, batch_size, shuffle=False, seed=0)]
    return torch.cat(zs), torch.as_tensor(data.labels, dtype=torch.long)


def _pairs(z: torch.Tensor, y: torch.Tensor, batch_size: int, gen: torch.Generator):
    order = torch.randperm(len(y), generator=gen)
    for i in range(0, len(y), batch_size):
        yield z[order[i:i + batch_size]], y[order[i:i + batch_size]]


def train_denoiser(diffusion: fd.FeatureDiffusion, z: torch.Tensor, y: torch.Tensor, cfg: LdmlrConfig,
                   device: torch.device, gen: torch.Generator) -> float:
    """Stage 2: the denoiser on frozen (raw) features; sets the standardisation to them first. Returns the last
    epoch's mean loss."""
    diffusion.to(device).train()
    diffusion.fit_statistics(z.to(device))
    scheduler = fd.feature_scheduler(cfg)
    opt = torch.optim.Adam(diffusion.denoiser.parameters(), lr=cfg.diffusion_lr)
    for _ in range(cfg.diffusion_epochs):
        total = 0.0
        for zb, yb in _pairs(z, y, cfg.diffusion_batch_size, gen):
            noise = torch.randn(zb.shape, generator=gen)
            t = torch.randint(0, cfg.num_train_timesteps, (len(yb),), generator=gen)
            zb, yb, noise, t = (v.to(device) for v in (zb, yb, noise, t))
            loss, _ = fd.ldm_loss(diffusion, scheduler, diffusion.normalize(zb), yb, noise, t, cfg.snr_gamma)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(yb)
    return total / len(y)


def pseudo_labels(class_counts: torch.Tensor, cfg: LdmlrConfig) -> torch.Tensor:
    counts = fd.generation_counts(class_counts, cfg.generate, cfg.generate_ratio, cfg.generate_min)
    return torch.repeat_interleave(torch.arange(len(counts)), counts)


def train_head(head: nn.Linear, z: torch.Tensor, y: torch.Tensor, cfg: LdmlrConfig, device: torch.device,
               gen: torch.Generator) -> None:
    """Stage 3: G alone on (real + generated) features, Adam."""
    head.to(device).train()
    opt = torch.optim.Adam(head.parameters(), lr=cfg.head_lr, weight_decay=cfg.head_weight_decay)
    for _ in range(cfg.head_epochs):
        for zb, yb in _pairs(z, y, cfg.head_batch_size, gen):
            loss = F.cross_entropy(head(zb.to(device)), yb.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def three_stage(model: FeatureClassifier, data: ImageSet, cfg: ExperimentConfig, device: torch.device, seed: int,
                penalties: list[Penalty]) -> TrainResult:
    ld, tc = cfg.ldmlr, cfg.train
    result = fit(model.classifier, data, epochs=tc.local_epochs, batch_size=tc.batch_size, lr=tc.lr,
                 momentum=tc.momentum, weight_decay=tc.weight_decay, device=device, seed=seed, penalties=penalties)
    z, y = extract(model, data, tc.eval_batch_size, device)
    gen = torch.Generator().manual_seed(seed)
    train_denoiser(model.diffusion, z, y, ld, device, gen)
    labels = pseudo_labels(torch.bincount(y, minlength=model.head.out_features), ld)
    generated = fd.sample(model.diffusion.eval(), fd.feature_scheduler(ld), labels, ld.sampling_steps, gen).cpu()
    train_head(model.head, torch.cat([z, generated]), torch.cat([y, labels]), ld, device, gen)
    return result


@dataclass(frozen=True)
class Weights:
    """What one end-to-end step optimises: L = real * L_real + sem * L_sem + ge * L_ge."""

    real: float
    sem: float
    ge: float
    ratio: float
    """Pseudo-features per real example when L_ge is taken."""
    classifier: bool
    """E and G step (else they are frozen: features detached, their optimiser idle)."""
    denoiser: bool
    """theta steps (else frozen: pseudo-features sampled without gradient)."""


def step_weights(cfg: LdmlrConfig, step: int, total: int) -> Weights:
    """The schedule's weights at ``step`` (0-based) of ``total``."""
    if cfg.schedule == "A":
        ramp = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        return Weights(1.0, cfg.lambda_sem * ramp, cfg.gamma_ge * ramp, cfg.pseudo_ratio, True, True)
    if cfg.schedule == "B":
        if step % (cfg.alternate + 1) < cfg.alternate:
            return Weights(0.0, cfg.lambda_sem, 0.0, cfg.pseudo_ratio, False, True)
        return Weights(1.0, 0.0, cfg.gamma_ge, cfg.pseudo_ratio, True, False)
    sem_from, ge_from = (math.floor(p * total) for p in cfg.phases)
    if step < sem_from:
        return Weights(1.0, 0.0, 0.0, cfg.pseudo_ratio_start, True, False)
    if step < ge_from:
        return Weights(1.0, cfg.lambda_sem, 0.0, cfg.pseudo_ratio_start, True, True)
    progress = (step - ge_from) / max(1, total - 1 - ge_from)
    ratio = cfg.pseudo_ratio_start + progress * (cfg.pseudo_ratio - cfg.pseudo_ratio_start)
    return Weights(1.0, cfg.lambda_sem, cfg.gamma_ge, ratio, True, True)


def semantic_loss(model: FeatureClassifier, scheduler, zn: torch.Tensor, y: torch.Tensor, protos: fd.Prototypes,
                  cfg: LdmlrConfig, gen: torch.Generator) -> torch.Tensor:
    """L_sem = L_LDM + eta_p L_proto + eta_s L_shape of a batch of standardised features."""
    noise = torch.randn(zn.shape, generator=gen).to(zn.device)
    t = torch.randint(0, cfg.num_train_timesteps, (len(y),), generator=gen).to(zn.device)
    loss, z0_hat = fd.ldm_loss(model.diffusion, scheduler, zn, y, noise, t, cfg.snr_gamma)
    loss = loss + cfg.eta_proto * fd.proto_loss(z0_hat, y, protos.mean)
    if cfg.shape == "cov":
        loss = loss + cfg.eta_shape * fd.cov_loss(z0_hat, y, protos.cov, protos.seen_cov)
    elif cfg.shape == "rad":
        loss = loss + cfg.eta_shape * fd.rad_loss(z0_hat, y, protos.mean, protos.radius(cfg.radius_scale))
    return loss


def end_to_end(model: FeatureClassifier, data: ImageSet, cfg: ExperimentConfig, device: torch.device, seed: int,
               penalties: list[Penalty]) -> TrainResult:
    """``train.local_epochs`` passes of the end-to-end loop: E, G by the train section's SGD, theta by Adam. The
    standardisation of the features follows them by EMA (``prototype_momentum``), as the prototypes do."""
    if len(data) == 0:
        raise ValueError("cannot train on an empty dataset")
    ld, tc = cfg.ldmlr, cfg.train
    num_classes = model.head.out_features
    z_all, y_all = extract(model, data, tc.eval_batch_size, device)
    model.diffusion.fit_statistics(z_all.to(device))
    counts = fd.generation_counts(torch.bincount(y_all, minlength=num_classes), ld.generate, ld.generate_ratio,
                                  ld.generate_min).float()
    protos = fd.Prototypes(num_classes, z_all.shape[1], ld.prototype_momentum)
    scheduler = fd.feature_scheduler(ld)
    opt_c = torch.optim.SGD(model.classifier.parameters(), lr=tc.lr, momentum=tc.momentum,
                            weight_decay=tc.weight_decay)
    opt_d = torch.optim.Adam(model.diffusion.parameters(), lr=ld.diffusion_lr)
    gen = torch.Generator().manual_seed(seed)
    total_steps = tc.local_epochs * math.ceil(len(data) / tc.batch_size)
    step, ge_steps, total, seen = 0, 0, 0.0, 0
    model.to(device).train()
    for epoch in range(tc.local_epochs):
        for x, y in loader(data, tc.batch_size, shuffle=True, seed=seed + epoch):
            w = step_weights(ld, step, total_steps)
            x, y = x.to(device), y.to(device)
            with torch.set_grad_enabled(w.classifier):
                z, logits = model.features(x)
            real = F.cross_entropy(logits, y)
            total, seen = total + real.item() * len(y), seen + len(y)
            loss = w.real * real + (sum(pen(model.classifier) for pen in penalties) if w.classifier else 0)
            model.diffusion.fit_statistics(z.detach(), ld.prototype_momentum)
            zn = model.diffusion.normalize(z if ld.sem_to_encoder else z.detach())
            protos.update(zn, y)
            if w.sem > 0:
                loss = loss + w.sem * semantic_loss(model, scheduler, zn, y, protos, ld, gen)
            if w.ge > 0:
                if ge_steps % ld.sample_every == 0:
                    m = max(1, round(w.ratio * len(y)))
                    labels = torch.multinomial(counts, m, replacement=True, generator=gen).to(device)
                    pseudo = fd.sample(model.diffusion, scheduler, labels, ld.e2e_sampling_steps, gen,
                                       grad=w.denoiser)
                    protos.update(model.diffusion.normalize(pseudo), labels, ld.pseudo_prototype_weight)
                    loss = loss + w.ge * F.cross_entropy(model.head(pseudo), labels)
                ge_steps += 1
            opt_c.zero_grad(set_to_none=True)
            opt_d.zero_grad(set_to_none=True)
            if loss.requires_grad:
                loss.backward()
            if w.classifier:
                opt_c.step()
            if w.denoiser:
                opt_d.step()
            step += 1
    return TrainResult(loss=total / seen, num_examples=len(data), steps=step)


def train(model: FeatureClassifier, data: ImageSet, cfg: ExperimentConfig, device: torch.device, seed: int,
          penalties: list[Penalty] = ()) -> TrainResult:
    """Local training as ``ldmlr.method`` says."""
    if cfg.ldmlr.method == "ce":
        tc = cfg.train
        return fit(model.classifier, data, epochs=tc.local_epochs, batch_size=tc.batch_size, lr=tc.lr,
                   momentum=tc.momentum, weight_decay=tc.weight_decay, device=device, seed=seed, penalties=penalties)
    run = three_stage if cfg.ldmlr.method == "three_stage" else end_to_end
    return run(model, data, cfg, device, seed, list(penalties))


def bands(class_counts: np.ndarray, shares: tuple[float, float]) -> dict[str, list[int]]:
    """Classes by training frequency: the most frequent ``shares[0]`` ('many'), the least frequent ``shares[1]``
    ('few'), the rest ('medium'); at least one class in each of many and few."""
    order = [int(c) for c in np.argsort(-class_counts, kind="stable")]
    many = max(1, round(shares[0] * len(order)))
    few = max(1, round(shares[1] * len(order)))
    return {"many": sorted(order[:many]), "medium": sorted(order[many:len(order) - few]),
            "few": sorted(order[len(order) - few:])}


class _Given(nn.Identity):
    """FID's extractor when the inputs already are features."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim


def frechet(real: torch.Tensor, fake: torch.Tensor, scale: float = 1.0) -> float:
    """Frechet distance of two sets of feature vectors divided by ``scale`` (torchmetrics' FID on given features)."""
    fid = FrechetInceptionDistance(feature=_Given(real.shape[1]))
    fid.update(real.double() / scale, real=True)
    fid.update(fake.double() / scale, real=False)
    return float(fid.compute())


def spread(z: torch.Tensor) -> float:
    """The root mean variance of features over their dimensions: dividing by it makes a Frechet distance free of the
    feature space's scale (each model has its own), so runs compare."""
    return float(z.var(0, unbiased=False).mean().sqrt().clamp_min(1e-8))


class LongTailTask(ClassifierTask):
    """The classifier's accuracy and loss on the global test split, and per band ('acc-many', 'acc-medium',
    'acc-few', bands by the pooled client data's class counts); unless the method is 'ce', the denoiser's
    ``ldmlr.score_per_class`` pseudo-features per class (DDIM, seeded by the run) scored against the real test
    features: 'feat-fid' (all classes) and 'feat-fid-<band>', the Frechet distance in the model's own feature space
    with both sets divided by the real test features' spread (:func:`spread`: scale-free, so models compare), and
    'class-fidelity' (G's accuracy on them)."""

    def __init__(self, ctx, strategy=None) -> None:
        cfg, fed = ctx.cfg, ctx.fed
        super().__init__(fed, ctx.model_fn, cfg.train.eval_batch_size, ctx.device)
        self.cfg = cfg
        counts = fed.pooled_train().label_histogram(fed.num_classes)
        self.bands = bands(np.asarray(counts), cfg.ldmlr.bands)
        generative = cfg.ldmlr.method != "ce"
        fids = ("feat-fid", *(f"feat-fid-{b}" for b in self.bands), "class-fidelity") if generative else ()
        self.columns = ("accuracy", "loss", *(f"acc-{b}" for b in self.bands), *fids)
        self.report = tuple(c for c in self.columns if c not in ("accuracy", "loss", "feat-fid-medium"))
        self.extras = {"bands": {b: [fed.class_names[c] for c in cs] for b, cs in self.bands.items()},
                       "class_counts": [int(c) for c in counts]}

    def scores(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        out = super().scores(state)
        fed, ld = self.fed, self.cfg.ldmlr
        correct = np.zeros(fed.num_classes)
        total = np.bincount(fed.test.labels, minlength=fed.num_classes)
        for c in range(fed.num_classes):
            correct[c] = out.get(f"test/acc-class-{fed.class_names[c]}", 0.0) * total[c]
        for band, classes in self.bands.items():
            out[f"acc-{band}"] = float(correct[classes].sum() / max(1, total[classes].sum()))
        if ld.method == "ce":
            return out
        model = self.model_fn()
        model.load_state_dict(state)
        real, real_y = extract(model, fed.test, self.batch_size, self.device)
        labels = torch.arange(fed.num_classes).repeat_interleave(ld.score_per_class)
        gen = torch.Generator().manual_seed(self.cfg.seed)
        fake = fd.sample(model.diffusion.eval(), fd.feature_scheduler(ld), labels, ld.sampling_steps, gen).cpu()
        scale = spread(real)
        out["feat-fid"] = frechet(real, fake, scale)
        for band, classes in self.bands.items():
            keep = torch.tensor(classes)
            out[f"feat-fid-{band}"] = frechet(real[torch.isin(real_y, keep)], fake[torch.isin(labels, keep)], scale)
        with torch.no_grad():
            predicted = model.head(fake.to(self.device)).argmax(1).cpu()
        out["class-fidelity"] = float((predicted == labels).float().mean())
        return out

    def final_models(self, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        return {"model": state}
