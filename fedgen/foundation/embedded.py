"""The embedded foundation profile: a small captioner and a small text-to-image model, pre-trained by fedgen on
digits-domains' server-held public split (no client data, no download), saved in Hugging Face format.

`fedgen foundation prepare embedded` (or the first run that asks for the profile) trains:
1. a BLIP captioner (BlipForConditionalGeneration) on (image, caption) pairs, with an auxiliary linear class probe
   on its vision tower's [CLS] output (discarded afterwards): a ViT trained from scratch on 1,620 images learns the
   digit far faster with it (held-out caption digit accuracy 0.85 against 0.65 without, same steps);
2. the autoencoder of a Stable-Diffusion-family pipeline (32x32 images, 4x8x8 latents);
3. its U-Net and CLIP text encoder together, with v-prediction (as Stable Diffusion 2.x) and 10% empty captions
   (for classifier-free guidance). With the DDPM epsilon loss the same budget learned the style but not the digit
   (at 2,000 steps, 17.6% of generated digits recognisable as the prompt's, against 97.4% with v-prediction).
Captions come from class, domain and colour ("a red handwritten digit seven on a dark background").
"""

from __future__ import annotations

import hashlib
import json
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from tqdm.auto import tqdm

from fedgen.config import EmbeddedConfig
from fedgen.data.digits import CLASS_NAMES, DOMAIN_NAMES, default_splits
from fedgen.data.digits import SIZE as DIGITS_SIZE
from fedgen.data.images import ImageSet
from fedgen.foundation.captions import describe, vocabulary
from fedgen.foundation.tiny import blip_captioner, blip_processor, clip_tokenizer, sd_pipeline
from fedgen.models import build_model
from fedgen.train import evaluate, fit, predict

SIZE = DIGITS_SIZE
MAX_TOKENS = 16
CFG_DROPOUT = 0.1
MANIFEST = "fedgen-embedded.json"


CHECK_KEYS = {"check_images_per_pair", "check_steps", "check_guidance_scale", "min_caption_accuracy",
              "min_class_fidelity"}


RECIPE_VERSION = 2
"""Part of the cache key: bump it when the pre-training recipe changes (2: the tokenizer's ids made canonical, so
the same settings give the same models in every process)."""


def profile_dir(cache_dir: str | Path, cfg: EmbeddedConfig) -> Path:
    """One folder per set of pre-training settings and recipe version, so a changed setting never reuses stale
    models."""
    key = cfg.model_dump_json(exclude=CHECK_KEYS) + f"-v{RECIPE_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return Path(cache_dir).expanduser() / f"embedded-{digest}"


def is_prepared(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator):
    for _ in range(steps):
        yield torch.randint(0, n, (batch_size,), generator=gen)


def _train(name: str, params, steps: int, lr: float, loss_fn, batches, progress: bool) -> float:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    bar = tqdm(batches, total=steps, desc=f"embedded {name}", disable=not progress, mininterval=2)
    ema = None
    for idx in bar:
        loss = loss_fn(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{ema:.4f}", refresh=False)
    return float(ema)


def prepare_embedded(cfg: EmbeddedConfig, cache_dir: str | Path, progress: bool = True) -> Path:
    """Pre-train and save the embedded captioner and generator; returns their folder (reused when present). The
    training is seeded on a fork of torch's global RNG: the caller's random stream is the same, cache cold or warm."""
    out = profile_dir(cache_dir, cfg)
    if is_prepared(out):
        return out
    with torch.random.fork_rng():
        return _prepare(cfg, out, progress)


def _prepare(cfg: EmbeddedConfig, out: Path, progress: bool) -> Path:
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    splits = default_splits()
    public, test = splits["public"], splits["test"]
    captions = [describe(public.images[i], public.labels[i], public.domains[i]) for i in range(len(public))]
    images = torch.from_numpy(public.images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    report: dict = {"settings": cfg.model_dump(), "public_images": len(public), "seconds": {}}

    # 1. the captioner
    t = time.perf_counter()
    processor = blip_processor(vocabulary(), SIZE)
    captioner = blip_captioner(processor, patch=8)
    probe = torch.nn.Linear(captioner.config.vision_config.hidden_size, len(CLASS_NAMES))
    enc = processor(images=list(public.images), text=captions, return_tensors="pt", padding=True)
    pixels, ids, mask = enc["pixel_values"], enc["input_ids"], enc["attention_mask"]
    labels = torch.from_numpy(public.labels)

    def caption_loss(idx):
        out = captioner(pixel_values=pixels[idx], input_ids=ids[idx], attention_mask=mask[idx], labels=ids[idx])
        return out.loss + F.cross_entropy(probe(out.image_embeds[:, 0]), labels[idx])

    report["captioner_loss"] = _train(
        "captioner", list(captioner.parameters()) + list(probe.parameters()), cfg.captioner_steps, cfg.lr,
        caption_loss,
        _batches(len(public), cfg.batch_size, cfg.captioner_steps, gen), progress,
    )
    captioner.eval()
    with torch.no_grad():  # a check on the server's held-out test split, never trained on
        test_pixels = processor(images=list(test.images), return_tensors="pt")["pixel_values"]
        made = processor.batch_decode(captioner.generate(pixel_values=test_pixels, max_new_tokens=MAX_TOKENS),
                                      skip_special_tokens=True)
    report["captioner_digit_accuracy_on_test"] = caption_accuracy(made, test.labels)
    report["seconds"]["captioner"] = time.perf_counter() - t

    # 2. the autoencoder
    t = time.perf_counter()
    tokenizer = clip_tokenizer(captions, MAX_TOKENS)
    pipe = sd_pipeline(tokenizer, SIZE)
    vae, unet, text_encoder = pipe.vae, pipe.unet, pipe.text_encoder

    def vae_loss(idx):
        x = images[idx]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        return F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()

    report["vae_loss"] = _train(
        "autoencoder", list(vae.parameters()), cfg.vae_steps, cfg.lr, vae_loss,
        _batches(len(public), cfg.batch_size, cfg.vae_steps, gen), progress,
    )
    vae.requires_grad_(False)
    with torch.no_grad():
        dist = vae.encode(images).latent_dist
        mean, std = dist.mean, dist.std
    scaling = float(1.0 / mean.std())
    vae.register_to_config(scaling_factor=scaling)
    report["seconds"]["autoencoder"] = time.perf_counter() - t

    # 3. the denoiser and the text encoder, with empty captions for classifier-free guidance
    t = time.perf_counter()
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    text_ids = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                         return_tensors="pt").input_ids
    empty_ids = tokenizer([""], padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids

    def diffusion_loss(idx):
        latents = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scaling
        noise = torch.randn(latents.shape, generator=gen)
        steps = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=gen)
        drop = torch.rand(len(idx), generator=gen) < CFG_DROPOUT
        tokens = torch.where(drop[:, None], empty_ids.expand(len(idx), -1), text_ids[idx])
        hidden = text_encoder(tokens)[0]
        pred = unet(noise_sched.add_noise(latents, noise, steps), steps, encoder_hidden_states=hidden).sample
        return F.mse_loss(pred, noise_sched.get_velocity(latents, noise, steps))  # v-prediction

    report["diffusion_loss"] = _train(
        "generator", list(unet.parameters()) + list(text_encoder.parameters()), cfg.generator_steps, cfg.lr,
        diffusion_loss, _batches(len(public), cfg.batch_size, cfg.generator_steps, gen), progress,
    )
    report["seconds"]["generator"] = time.perf_counter() - t

    tmp = out.with_name(out.name + ".tmp")
    captioner.save_pretrained(tmp / "captioner")
    processor.save_pretrained(tmp / "captioner")
    pipe.save_pretrained(tmp / "generator")
    t = time.perf_counter()
    report["class_fidelity"] = class_fidelity(tmp / "generator", test, cfg, progress)
    report["seconds"]["check"] = time.perf_counter() - t
    report["seconds"]["total"] = time.perf_counter() - t0
    report["torch_threads"] = torch.get_num_threads()
    (tmp / MANIFEST).write_text(json.dumps(report, indent=2))
    below = [f"{name} {value:.3f} < {floor}" for name, value, floor in (
        ("caption digit accuracy", report["captioner_digit_accuracy_on_test"], cfg.min_caption_accuracy),
        ("class fidelity", report["class_fidelity"]["overall"], cfg.min_class_fidelity)) if value < floor]
    if below:
        raise RuntimeError(f"the embedded foundation models are below their floor ({'; '.join(below)}): not used. "
                           f"They stay in {tmp} with {MANIFEST} for inspection; train longer "
                           "(foundation.embedded.*_steps) or lower foundation.embedded.min_*")
    tmp.rename(out)
    return out


@lru_cache(maxsize=1)
def _judge(seed: int) -> tuple[torch.nn.Module, float]:
    """A small CNN trained on the public split (15 epochs of SGD), and its accuracy on the test split."""
    splits, cpu = default_splits(), torch.device("cpu")
    judge = build_model("cnn", len(CLASS_NAMES), image_size=SIZE)
    fit(judge, splits["public"], epochs=15, batch_size=32, lr=0.01, momentum=0.9, weight_decay=5e-4, device=cpu,
        seed=seed)
    return judge, evaluate(judge, splits["test"], 256, cpu, len(DOMAIN_NAMES)).accuracy


def class_fidelity(generator_dir: Path, test: ImageSet, cfg: EmbeddedConfig, progress: bool = True) -> dict:
    """How often the generator draws the digit its caption names: the true captions of ``check_images_per_pair``
    held-out test images per (class, domain), one image each, read by a judge CNN trained on the public split.

    Returns the share overall and per domain, the judge's own accuracy on the test split, and the image count.
    """
    from fedgen.foundation import Generator, TextEncoder  # the package imports this module

    cpu = torch.device("cpu")
    judge, judge_accuracy = _judge(cfg.seed)
    pick = np.concatenate([np.flatnonzero((test.labels == c) & (test.domains == d))[:cfg.check_images_per_pair]
                           for c in range(len(CLASS_NAMES)) for d in range(len(DOMAIN_NAMES))])
    captions = [describe(test.images[i], test.labels[i], test.domains[i]) for i in pick]
    encodings = TextEncoder(str(generator_dir), cpu, torch.float32).encode(captions)
    images = Generator(str(generator_dir), "ddim", cpu, torch.float32).generate(
        encodings, 1, cfg.check_steps, cfg.check_guidance_scale, SIZE, 100, cfg.seed, progress)
    made = ImageSet(images, test.labels[pick], test.domains[pick])
    _, read = predict(judge, made, 256, cpu)
    right = read == made.labels
    return {
        "overall": float(right.mean()),
        "per_domain": {d: float(right[made.domains == k].mean()) for k, d in enumerate(DOMAIN_NAMES)
                       if (made.domains == k).any()},
        "judge_accuracy_on_test": judge_accuracy,
        "images": len(made),
        "steps": cfg.check_steps,
        "guidance_scale": cfg.check_guidance_scale,
    }


def caption_accuracy(captions: list[str], labels: np.ndarray) -> float:
    """Share of captions naming the right digit (a check of the captioner)."""
    return float(np.mean([CLASS_NAMES[y] in c.split() for c, y in zip(captions, labels, strict=True)]))
