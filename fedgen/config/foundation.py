"""The foundation models (captioner and text-to-image generator): pretrained ones by path, or the embedded profile."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from fedgen.config.base import Fraction, PositiveFloat, PositiveInt, Section

if TYPE_CHECKING:
    from fedgen.config.experiment import ExperimentConfig


class CaptionerConfig(Section):
    kind: Literal["blip", "blip2"] = "blip2"
    path: str = "Salesforce/blip2-opt-2.7b"
    """A Hugging Face hub id or a local directory, loaded with from_pretrained (ignored by the embedded profile)."""
    max_new_tokens: PositiveInt = 30
    batch_size: PositiveInt = 16


class GeneratorConfig(Section):
    path: str = "CompVis/stable-diffusion-v1-4"
    """A diffusers text-to-image pipeline: hub id or local directory (ignored by the embedded profile)."""
    scheduler: Literal["ddim", "dpm", "pndm", "pipeline"] = "ddim"
    """'pipeline' keeps the scheduler the pipeline was saved with."""
    steps: PositiveInt = 50
    guidance_scale: Annotated[float, Field(ge=1)] = 7.5
    size: PositiveInt = 512
    batch_size: PositiveInt = 8


class EmbeddedConfig(Section):
    """`fedgen foundation prepare embedded`: small models pre-trained on the server-held public split."""

    captioner_steps: PositiveInt = 3000
    vae_steps: PositiveInt = 400
    generator_steps: PositiveInt = 1500
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 1e-3
    seed: int = 0
    # the check at the end of the step (not part of the models' identity: changing it trains nothing again)
    check_images_per_pair: PositiveInt = 10
    """Images generated per (class, domain) of the held-out test split to measure class fidelity."""
    check_steps: PositiveInt = 20
    check_guidance_scale: Annotated[float, Field(ge=1)] = 3.0
    min_caption_accuracy: Fraction = 0.75
    """Prepare fails below this share of held-out test images whose caption names the right digit."""
    min_class_fidelity: Fraction = 0.75
    """Prepare fails below this share of generated images that a judge CNN reads as the prompted digit."""


class FoundationConfig(Section):
    profile: Literal["embedded", "pretrained"] = "embedded"
    """'embedded': small models fedgen pre-trains on digits-domains' public split (no download, CPU);
    'pretrained': the captioner and generator named by their paths."""
    cache_dir: str = "~/.cache/fedgen/foundation"
    dtype: Literal["auto", "float32", "float16"] = "auto"
    """'auto': float16 on CUDA, float32 on the CPU."""
    captioner: CaptionerConfig = CaptionerConfig()
    generator: GeneratorConfig = GeneratorConfig()
    embedded: EmbeddedConfig = EmbeddedConfig()


def check_embedded(cfg: ExperimentConfig) -> None:
    """The embedded foundation models fit only digits-domains at their own size."""
    if cfg.foundation.profile == "embedded":
        from fedgen.data.digits import SIZE  # the embedded models are built for digits-domains' images

        if cfg.data.dataset != "digits-domains":
            raise ValueError("foundation.profile=embedded is trained on digits-domains: use that dataset, or "
                             "foundation.profile=pretrained with real model paths")
        if cfg.foundation.generator.size != SIZE:
            raise ValueError(f"foundation.generator.size must be {SIZE} with the embedded profile")
