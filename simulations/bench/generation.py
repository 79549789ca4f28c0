"""``fedgen bench generation``: our Generator against the bare diffusers pipeline (the embedded architecture on CPU;
on a GPU, also Stable Diffusion v1.x's architecture at 512x512)."""

from __future__ import annotations

import time
from pathlib import Path

import torch


def generation(work: Path, images: int = 200, steps: int = 20, batch: int = 100) -> dict:
    """Our Generator against the bare diffusers pipeline, same model, prompt embeddings, steps and batch."""
    from diffusers import StableDiffusionPipeline

    from fedgen.foundation import Generator
    from fedgen.foundation.embedded import MAX_TOKENS, SIZE
    from fedgen.foundation.tiny import clip_tokenizer, sd_pipeline

    # speed does not depend on the weights: the embedded architecture, untrained, through the same loading path
    folder = work / "generation-model"
    sd_pipeline(clip_tokenizer(["a white digit seven"] * 5, MAX_TOKENS), SIZE).save_pretrained(folder)
    ours = Generator(str(folder), "ddim", torch.device("cpu"), torch.float32)
    embeds = torch.randn(images // 10, MAX_TOKENS, ours.pipe.text_encoder.config.hidden_size)
    ours.generate(embeds[:1], 2, 2, 3.0, SIZE, batch, seed=0, progress=False)  # warm-up, for both (same process)
    t = time.perf_counter()
    ours.generate(embeds, 10, steps, 3.0, SIZE, batch, seed=0, progress=False)
    ours_s = time.perf_counter() - t
    bare = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    bare.set_progress_bar_config(disable=True)
    negative = ours.empty_embedding()
    jobs = embeds.repeat_interleave(10, dim=0)
    t = time.perf_counter()
    with torch.no_grad():
        for start in range(0, images, batch):
            b = jobs[start : start + batch]
            bare(prompt_embeds=b, negative_prompt_embeds=negative.expand(len(b), -1, -1), num_inference_steps=steps,
                 guidance_scale=3.0, height=SIZE, width=SIZE, output_type="np")
    bare_s = time.perf_counter() - t
    return {
        "setup": f"embedded architecture ({SIZE}x{SIZE} images, 4x8x8 latents), {images} images, DDIM {steps} steps, "
                 f"guidance 3.0, batch {batch}, CPU float32",
        "ours_images_per_s": images / ours_s, "bare_diffusers_images_per_s": images / bare_s,
        "ratio_ours_over_bare_time": ours_s / bare_s,
        "gpu_images_per_s": _gpu_generation(folder, embeds, steps, batch) if torch.cuda.is_available()
        else "not measured: no GPU",
        "sd_v1_512_gpu": _sd_v1_generation(work) if torch.cuda.is_available() else "not measured: no GPU",
    }


def _gpu_generation(folder: Path, embeds: torch.Tensor, steps: int, batch: int) -> float:
    """The same generation on CUDA, float16 (timed after a warm-up)."""
    from fedgen.foundation import Generator
    from fedgen.foundation.embedded import SIZE

    gpu = Generator(str(folder), "ddim", torch.device("cuda"), torch.float16)
    gpu.generate(embeds[:1], 2, 2, 3.0, SIZE, batch, seed=0, progress=False)
    torch.cuda.synchronize()
    t = time.perf_counter()
    gpu.generate(embeds, 10, steps, 3.0, SIZE, batch, seed=0, progress=False)
    torch.cuda.synchronize()
    return len(embeds) * 10 / (time.perf_counter() - t)


def sd_v1_architecture():
    """Stable Diffusion v1.x's architecture with random weights (speed does not depend on the weights, and none can
    be downloaded here): CLIP ViT-L/14's text encoder (12 layers, 768 wide, 77 tokens), the 4-level KL autoencoder
    (128/256/512/512) and the conditional U-Net (320/640/1280/1280, cross-attention 768, 64x64 latents)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from fedgen.foundation.tiny import clip_tokenizer

    tokenizer = clip_tokenizer(["a photo of a digit"] * 5, 77)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2, sample_size=512)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # diffusers' defaults
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _sd_v1_generation(work: Path, images: int = 16, steps: int = 50, batch: int = 8) -> dict:
    """SD v1.x's architecture at 512x512 on CUDA, float16, DDIM 50 steps, guidance 7.5: ours against bare diffusers."""
    from diffusers import StableDiffusionPipeline

    from fedgen.foundation import Generator

    folder = work / "sd-v1-architecture"
    pipe = sd_v1_architecture()
    unet_params = sum(p.numel() for p in pipe.unet.parameters())
    pipe.save_pretrained(folder)
    del pipe
    ours = Generator(str(folder), "ddim", torch.device("cuda"), torch.float16)
    embeds = torch.randn(images // batch, 77, 768)
    ours.generate(embeds[:1], 1, 2, 7.5, 512, batch, seed=0, progress=False)  # warm-up
    torch.cuda.synchronize()
    t = time.perf_counter()
    ours.generate(embeds, batch, steps, 7.5, 512, batch, seed=0, progress=False)
    torch.cuda.synchronize()
    ours_s = time.perf_counter() - t
    del ours
    bare = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float16, safety_checker=None,
                                                   requires_safety_checker=False).to("cuda")
    bare.set_progress_bar_config(disable=True)
    jobs = embeds.repeat_interleave(batch, dim=0).to("cuda", torch.float16)
    negative = torch.zeros_like(jobs[:batch])
    bare(prompt_embeds=jobs[:batch], negative_prompt_embeds=negative, num_inference_steps=2, output_type="np")
    torch.cuda.synchronize()
    t = time.perf_counter()
    for start in range(0, images, batch):
        bare(prompt_embeds=jobs[start : start + batch], negative_prompt_embeds=negative, num_inference_steps=steps,
             guidance_scale=7.5, height=512, width=512, output_type="np")
    torch.cuda.synchronize()
    bare_s = time.perf_counter() - t
    return {
        "setup": f"SD v1.x architecture (random weights; U-Net {unet_params / 1e6:.0f}M parameters), 512x512, "
                 f"{images} images, DDIM {steps} steps, guidance 7.5, batch {batch}, float16, "
                 f"{torch.cuda.get_device_name(0)}",
        "ours_images_per_s": images / ours_s, "bare_diffusers_images_per_s": images / bare_s,
        "ratio_ours_over_bare_time": ours_s / bare_s,
    }
