"""Foundation models: captioner (BLIP / BLIP-2), text encoder (the generator's CLIP), text-to-image generator.

Each loads with ``from_pretrained`` from a Hugging Face hub id or a local directory. ``resolve(cfg)`` gives the
paths a config names: for the embedded profile, the folder `fedgen foundation prepare embedded` writes (prepared on
first use); for the pretrained profile, the configured ids or directories.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fedgen.config import FoundationConfig


@dataclass(frozen=True)
class FoundationPaths:
    profile: str
    captioner: str
    captioner_kind: str
    generator: str

    def describe(self) -> dict[str, str]:
        return {"profile": self.profile, "captioner": f"{self.captioner_kind}:{self.captioner}",
                "generator": self.generator}


def resolve(cfg: FoundationConfig, prepare: bool = False) -> FoundationPaths:
    """Where the configured models are; with ``prepare``, pre-train the embedded profile if it is missing."""
    if cfg.profile == "embedded":
        from fedgen.foundation.embedded import is_prepared, prepare_embedded, profile_dir

        folder = profile_dir(cfg.cache_dir, cfg.embedded)
        if not is_prepared(folder):
            if not prepare:
                raise FileNotFoundError(
                    f"the embedded foundation models are not prepared in {folder}: run "
                    "`fedgen foundation prepare embedded` (a few minutes on a CPU)"
                )
            folder = prepare_embedded(cfg.embedded, cfg.cache_dir)
        return FoundationPaths("embedded", str(folder / "captioner"), "blip", str(folder / "generator"))
    return FoundationPaths("pretrained", cfg.captioner.path, cfg.captioner.kind, cfg.generator.path)


def torch_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def _from_pretrained(loader, path: str, what: str, **kwargs):
    """``loader.from_pretrained(path)`` with an error that says how to provide a missing model."""
    try:
        return loader.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        local = Path(path).expanduser()
        hint = (
            f"the directory {local} holds no loadable {what}"
            if local.exists()
            else f"'{path}' is neither a local directory nor a model id in the Hugging Face cache; download it on a "
            f"machine with internet (huggingface-cli download {path}) or point the config at a local copy"
        )
        raise FileNotFoundError(
            f"cannot load the {what} from '{path}': {hint}. ({type(err).__name__}: {err})"
        ) from None


class Captioner:
    """Batched image captioning with BLIP or BLIP-2."""

    def __init__(self, path: str, kind: str, device: torch.device, dtype: torch.dtype) -> None:
        from transformers import AutoProcessor, Blip2ForConditionalGeneration, BlipForConditionalGeneration

        model_cls = BlipForConditionalGeneration if kind == "blip" else Blip2ForConditionalGeneration
        self.processor = _from_pretrained(AutoProcessor, path, f"{kind} processor")
        self.model = _from_pretrained(model_cls, path, f"{kind} captioner", dtype=dtype).to(device).eval()
        self.device, self.dtype = device, dtype

    @torch.no_grad()
    def caption(self, images: np.ndarray, batch_size: int, max_new_tokens: int, progress: bool = False) -> list[str]:
        """Captions of uint8 (N, H, W, 3) images."""
        out: list[str] = []
        for start in tqdm(range(0, len(images), batch_size), desc="captioning", disable=not progress):
            batch = self.processor(images=list(images[start : start + batch_size]), return_tensors="pt")
            pixels = batch["pixel_values"].to(self.device, self.dtype)
            ids = self.model.generate(pixel_values=pixels, max_new_tokens=max_new_tokens)
            out.extend(t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True))
        return out


class TextEncoder:
    """The generator pipeline's own CLIP text encoder: token-level ``last_hidden_state`` (what conditions SD)."""

    def __init__(self, generator_path: str, device: torch.device, dtype: torch.dtype) -> None:
        from transformers import CLIPTextModel, CLIPTokenizer

        self.tokenizer = _from_pretrained(CLIPTokenizer, generator_path, "tokenizer", subfolder="tokenizer")
        self.model = _from_pretrained(
            CLIPTextModel, generator_path, "text encoder", subfolder="text_encoder", dtype=dtype
        ).to(device).eval()
        self.device = device

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64, pooled: bool = False) -> torch.Tensor:
        """(N, max_length, hidden) token-level encodings, padded as the pipeline pads; (N, hidden) if ``pooled``."""
        outs = []
        for start in range(0, len(texts), batch_size):
            ids = self.tokenizer(
                texts[start : start + batch_size], padding="max_length", truncation=True,
                max_length=self.tokenizer.model_max_length, return_tensors="pt",
            ).input_ids.to(self.device)
            result = self.model(ids)
            outs.append((result.pooler_output if pooled else result.last_hidden_state).float().cpu())
        return torch.cat(outs)


class Generator:
    """A diffusers text-to-image pipeline generating from prompts or from stored prompt embeddings."""

    SCHEDULERS = {"ddim": "DDIMScheduler", "dpm": "DPMSolverMultistepScheduler", "pndm": "PNDMScheduler"}

    def __init__(self, path: str, scheduler: str, device: torch.device, dtype: torch.dtype) -> None:
        import diffusers

        self.pipe = _from_pretrained(
            diffusers.AutoPipelineForText2Image, path, "text-to-image pipeline", dtype=dtype,
            safety_checker=None, requires_safety_checker=False,
        ).to(device)
        if scheduler != "pipeline":
            cls = getattr(diffusers, self.SCHEDULERS[scheduler])
            self.pipe.scheduler = cls.from_config(self.pipe.scheduler.config)
        self.pipe.set_progress_bar_config(disable=True)
        self.device, self.dtype = device, dtype

    @torch.no_grad()
    def empty_embedding(self) -> torch.Tensor:
        """The encoding of the empty prompt (classifier-free guidance's unconditional branch), (1, seq, hidden)."""
        embeds, _ = self.pipe.encode_prompt([""], self.device, 1, False)
        return embeds

    @torch.no_grad()
    def generate(
        self,
        prompt_embeds: torch.Tensor,
        per_embedding: int,
        steps: int,
        guidance_scale: float | np.ndarray,
        size: int,
        batch_size: int,
        seed: int,
        progress: bool = True,
        out_size: int | None = None,
    ) -> np.ndarray:
        """``per_embedding`` images for each of the (K, seq, hidden) embeddings: uint8 (K * per_embedding, H, W, 3),
        ordered embedding by embedding. Classifier-free guidance runs against the empty prompt, at one scale or at a
        scale per image (an array of K * per_embedding; images of one scale are batched together). With
        ``out_size``, each batch is resized (bilinear, antialiased) to out_size x out_size as it is generated, so a
        large synthetic set is never held at the generator's resolution."""
        jobs = prompt_embeds.repeat_interleave(per_embedding, dim=0)
        scales = np.broadcast_to(np.asarray(guidance_scale, dtype=np.float64), (len(jobs),))
        batches = [idx[start:start + batch_size]
                   for scale in np.unique(scales) for idx in [np.flatnonzero(scales == scale)]
                   for start in range(0, len(idx), batch_size)]
        negative = self.empty_embedding()
        gen = torch.Generator(device="cpu").manual_seed(seed)
        images = np.zeros((len(jobs), out_size or size, out_size or size, 3), dtype=np.uint8)
        for idx in tqdm(batches, desc="generating", disable=not progress, mininterval=2):
            batch = jobs[torch.from_numpy(idx)].to(self.device, self.dtype)
            latents = torch.randn(
                (len(batch), self.pipe.unet.config.in_channels, size // self.pipe.vae_scale_factor,
                 size // self.pipe.vae_scale_factor), generator=gen,
            ).to(self.device, self.dtype)
            out = self.pipe(
                prompt_embeds=batch, negative_prompt_embeds=negative.expand(len(batch), -1, -1).to(self.dtype),
                num_inference_steps=steps, guidance_scale=float(scales[idx[0]]), height=size, width=size,
                latents=latents, output_type="np",
            ).images
            if out_size and out_size != size:
                t = torch.from_numpy(np.ascontiguousarray(out)).float().permute(0, 3, 1, 2)
                t = torch.nn.functional.interpolate(t, size=(out_size, out_size), mode="bilinear", antialias=True)
                out = t.permute(0, 2, 3, 1).numpy()
            images[idx] = (np.clip(out, 0, 1) * 255).round().astype(np.uint8)
        return images


@lru_cache(maxsize=2)
def captioner(path: str, kind: str, device: str, dtype: str) -> Captioner:
    """Per-process cache: a Ray worker loads each model once."""
    return Captioner(path, kind, torch.device(device), getattr(torch, dtype))


@lru_cache(maxsize=2)
def text_encoder(path: str, device: str, dtype: str) -> TextEncoder:
    return TextEncoder(path, torch.device(device), getattr(torch, dtype))
