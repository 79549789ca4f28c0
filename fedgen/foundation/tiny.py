"""Small BLIP captioners and Stable-Diffusion-family pipelines built from configs, with tokenizers made from text.

Same model families as the real ones (BlipForConditionalGeneration, StableDiffusionPipeline with a CLIP text
encoder, a KL autoencoder and a conditional U-Net), at sizes a CPU trains in minutes. Used by the embedded profile
(then trained) and by the tests (left random). Everything is saved in Hugging Face format and loaded back through
the same ``from_pretrained`` path as the real models.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
)

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]


def blip_processor(words: list[str], image_size: int) -> BlipProcessor:
    """A BLIP processor whose word-level BERT vocabulary is ``words`` (plus BERT's specials and [DEC])."""
    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.txt"
        vocab.write_text("\n".join(BERT_SPECIALS + sorted(set(words) - set(BERT_SPECIALS))))
        tokenizer = BertTokenizer(str(vocab), bos_token="[DEC]")
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    return BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def blip_captioner(
    processor: BlipProcessor, width: int = 64, layers: int = 2, patch: int = 4
) -> BlipForConditionalGeneration:
    tok = processor.tokenizer
    size = processor.image_processor.size["height"]
    heads = max(1, width // 16)
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=2 * width, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
            sep_token_id=tok.sep_token_id, max_position_embeddings=64,
        ),
        vision_config=dict(
            hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=2 * width,
            image_size=size, patch_size=patch,
        ),
    )
    return BlipForConditionalGeneration(config)


def clip_tokenizer(texts: list[str], max_length: int, vocab_size: int = 400) -> CLIPTokenizer:
    """A CLIP BPE tokenizer trained on ``texts`` with the `tokenizers` library (``</w>`` word ends, as CLIP's)."""
    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CLIP_SPECIALS, end_of_word_suffix="</w>")
    bpe.train_from_iterator([t.lower() for t in texts], trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [m.split() if isinstance(m, str) else m for m in model["merges"]]
    # the trainer's merges come out the same in every process, but the ids of its initial alphabet do not (a hash
    # map's order): number the tokens canonically (specials, the alphabet sorted, then the merges' results in order)
    made = list(dict.fromkeys("".join(m) for m in merges))
    alphabet = sorted(set(model["vocab"]) - set(made) - set(CLIP_SPECIALS))
    vocab = {tok: i for i, tok in enumerate([*CLIP_SPECIALS, *alphabet, *made])}
    assert vocab.keys() == model["vocab"].keys()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=max_length)


def sd_pipeline(
    tokenizer: CLIPTokenizer,
    image_size: int = 32,
    text_width: int = 32,
    vae_channels: tuple[int, ...] = (16, 32, 32),
    unet_channels: tuple[int, int] = (32, 64),
    pooled_text: bool = True,
) -> StableDiffusionPipeline:
    """A Stable-Diffusion-family pipeline: CLIP text encoder, KL autoencoder (each extra VAE block halves the latent
    side: 32x32 images -> 8x8 latents by default), conditional U-Net, DDIM scheduler.

    ``pooled_text`` adds an attention-pooled summary of the prompt encoding to the U-Net's time embedding
    (diffusers' ``addition_embed_type="text"``, as in DeepFloyd IF), so every residual block sees the prompt, not
    only the cross-attention layers; the pipeline still conditions on ``prompt_embeds`` alone."""
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=2 * text_width, num_hidden_layers=2,
            num_attention_heads=max(1, text_width // 16), max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=vae_channels, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
        sample_size=image_size, layers_per_block=1, mid_block_add_attention=False,
    )
    latent = image_size // 2 ** (len(vae_channels) - 1)
    unet = UNet2DConditionModel(
        sample_size=latent, in_channels=4, out_channels=4, block_out_channels=unet_channels,
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=text_width, attention_head_dim=8,
        norm_num_groups=8, addition_embed_type="text" if pooled_text else None,
        addition_embed_type_num_heads=max(1, text_width // 16),
    )
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type="v_prediction")
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
