"""Foundation models, built tiny and random from configs, saved, and loaded through the real from_pretrained path."""

import json
import random

import numpy as np
import pytest
import torch

from fedgen import checkpoint, foundation, oscar
from fedgen.config import EmbeddedConfig, FoundationConfig
from fedgen.data.digits import CLASS_NAMES, PALETTE, load_digits_domains
from fedgen.foundation.captions import describe, vocabulary

CPU = torch.device("cpu")
CAPTIONS = ["a red handwritten digit seven on a dark background", "a white handwritten digit one on a black background"]
# tiny_models (conftest): a random BLIP in tiny_models/blip, a random Stable-Diffusion-family pipeline in .../sd


def test_captioner_loads_and_captions_batches(tiny_models):
    cap = foundation.Captioner(str(tiny_models / "blip"), "blip", CPU, torch.float32)
    images = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    captions = cap.caption(images, batch_size=2, max_new_tokens=6)
    assert len(captions) == 5 and all(isinstance(c, str) for c in captions)
    assert set(" ".join(captions).split()) <= set(vocabulary())


def test_text_encoder_gives_token_level_and_pooled_encodings(tiny_models):
    enc = foundation.TextEncoder(str(tiny_models / "sd"), CPU, torch.float32)
    tokens = enc.encode(CAPTIONS)
    assert tokens.shape == (2, 16, 32)  # (N, model_max_length, hidden): what conditions the U-Net
    assert enc.encode(CAPTIONS, pooled=True).shape == (2, 32)
    assert not torch.allclose(tokens[0], tokens[1])
    assert torch.allclose(enc.encode(CAPTIONS[:1], batch_size=1), tokens[:1], atol=1e-6)


def test_generator_from_stored_embeddings_is_seeded(tiny_models):
    gen = foundation.Generator(str(tiny_models / "sd"), "ddim", CPU, torch.float32)
    embeds = foundation.TextEncoder(str(tiny_models / "sd"), CPU, torch.float32).encode(CAPTIONS)
    a = gen.generate(embeds, per_embedding=3, steps=2, guidance_scale=3.0, size=32, batch_size=4, seed=1,
                     progress=False)
    assert a.shape == (6, 32, 32, 3) and a.dtype == np.uint8
    b = gen.generate(embeds, 3, 2, 3.0, 32, 4, seed=1, progress=False)
    c = gen.generate(embeds, 3, 2, 3.0, 32, 4, seed=2, progress=False)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert gen.empty_embedding().shape == (1, 16, 32)
    assert type(foundation.Generator(str(tiny_models / "sd"), "dpm", CPU, torch.float32).pipe.scheduler).__name__ == (
        "DPMSolverMultistepScheduler")


def test_a_missing_model_says_how_to_provide_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a local directory nor a model id.*huggingface-cli download"):
        foundation.Captioner("no-such-org/no-such-model", "blip", CPU, torch.float32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no loadable"):
        foundation.Generator(str(tmp_path / "empty"), "ddim", CPU, torch.float32)


TWO_STEPS = dict(captioner_steps=2, vae_steps=2, generator_steps=2, batch_size=8, check_images_per_pair=1,
                 check_steps=2)


@pytest.mark.statistical
def test_embedded_profile_below_its_floor_fails_loudly_and_is_not_used(tmp_path):
    """Two training steps cannot name or draw digits: prepare refuses the models, names both figures, keeps them
    aside for inspection, and nothing is cached for a run to pick up."""
    cfg = FoundationConfig(cache_dir=str(tmp_path), embedded=EmbeddedConfig(**TWO_STEPS))
    with pytest.raises(RuntimeError, match=r"below their floor \(caption digit accuracy 0\.\d+ < 0\.75; "
                                           r"class fidelity 0\.\d+ < 0\.75\)"):
        foundation.resolve(cfg, prepare=True)
    with pytest.raises(FileNotFoundError):
        foundation.resolve(cfg)
    (kept,) = tmp_path.glob("embedded-*.tmp")
    fidelity = json.loads((kept / "fedgen-embedded.json").read_text())["class_fidelity"]
    assert fidelity["images"] == 10 * 6 and set(fidelity["per_domain"]) == {
        "plain", "inverted", "coloured", "rotated", "noisy", "blurred"}
    assert fidelity["judge_accuracy_on_test"] > 0.8  # the judge itself reads real digits


@pytest.mark.statistical
def test_embedded_profile_prepares_once_and_loads_through_from_pretrained(tmp_path):
    cfg = FoundationConfig(cache_dir=str(tmp_path), embedded=EmbeddedConfig(
        **TWO_STEPS, min_caption_accuracy=0, min_class_fidelity=0))
    with pytest.raises(FileNotFoundError, match="fedgen foundation prepare embedded"):
        foundation.resolve(cfg)
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    before = checkpoint.rng_state()
    paths = foundation.resolve(cfg, prepare=True)
    after = checkpoint.rng_state()  # preparing (a cold cache) leaves the run's random streams where a warm one does
    assert torch.equal(after["torch"], before["torch"]) and after["python"] == before["python"]
    assert all(np.array_equal(a, b) for a, b in zip(after["numpy"], before["numpy"], strict=True))
    assert paths.profile == "embedded" and (tmp_path / paths.generator).exists()
    assert foundation.resolve(cfg) == paths  # prepared once, then reused
    manifest = json.loads((tmp_path / paths.generator).parent.joinpath("fedgen-embedded.json").read_text())
    assert 0.0 <= manifest["captioner_digit_accuracy_on_test"] <= 1.0 and manifest["seconds"]["total"] > 0
    other = FoundationConfig(cache_dir=str(tmp_path), embedded=cfg.embedded.model_copy(update={"seed": 1}))
    assert foundation.resolve(other, prepare=True).generator != paths.generator  # other settings, other folder
    checked = FoundationConfig(cache_dir=str(tmp_path), embedded=cfg.embedded.model_copy(
        update={"min_class_fidelity": 0.5, "check_images_per_pair": 3}))
    assert foundation.resolve(checked) == paths  # the check's own settings train nothing again
    cap = foundation.Captioner(paths.captioner, "blip", CPU, torch.float32)
    assert len(cap.caption(np.zeros((2, 32, 32, 3), np.uint8), 2, 4)) == 2
    enc = foundation.TextEncoder(paths.generator, CPU, torch.float32).encode(["a red handwritten digit"])
    assert enc.shape[0] == 1
    pipe = foundation.Generator(paths.generator, "dpm", CPU, torch.float32).pipe
    # trained for v-prediction, and any scheduler swapped in keeps it; the prompt also reaches the time embedding
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.unet.config.addition_embed_type == "text"


def test_captions_name_class_domain_and_colour():
    pub = load_digits_domains(0.15, 0.15, 0)["public"]
    for d, must in [(0, "white"), (1, "black handwritten"), (3, "rotated"), (4, "noisy"), (5, "blurred")]:
        i = int(np.flatnonzero(pub.domains == d)[0])
        text = describe(pub.images[i], pub.labels[i], d)
        assert must in text and CLASS_NAMES[pub.labels[i]] in text.split()
    colours = {describe(pub.images[i], pub.labels[i], 2).split()[1] for i in np.flatnonzero(pub.domains == 2)}
    assert colours == set(PALETTE)  # every palette colour is recognised in the coloured domain
    assert set(vocabulary()) >= set(CLASS_NAMES) | set(PALETTE)


def test_class_means_wire_format_and_checks():
    enc = torch.arange(24, dtype=torch.float32).reshape(4, 2, 3)
    labels = np.array([1, 3, 1, 3])
    means = oscar.class_means(enc, labels)
    assert set(means) == {1, 3} and means[1][1] == 2
    assert torch.equal(means[1][0], (enc[0] + enc[2]) / 2)
    arrays, meta = oscar.to_record(means, "float16")
    assert meta == {"class-ids": [1, 3]}  # the counts stay on the client: the server does not use them
    assert arrays["encodings"].shape == (2, 2, 3) and arrays["encodings"].dtype == torch.float16
    arrays = {k: v.numpy() for k, v in arrays.items()}
    assert oscar.check_upload(arrays, meta["class-ids"], (2, 3), 10, "float16") == []
    bad = oscar.check_upload({"encodings": np.zeros((2, 5, 3))}, [1, 12], (2, 3), 10, "float16")
    assert any("outside 0..9" in p for p in bad)
    assert any("shape [2, 5, 3], expected [2, 2, 3]" in p for p in bad)
    assert any("is float64, expected float16" in p for p in bad)
    assert oscar.check_upload(arrays, [1, 1], (2, 3), 10, "float16") == ["repeated class ids"]
    assert any("expected one array" in p for p in oscar.check_upload({"x": arrays["encodings"]}, [1, 3],
                                                                     (2, 3), 10, "float16"))
    fractional = oscar.check_upload(arrays, [1.5, 3], (2, 3), 10, "float16")
    assert fractional == ["class id 1.5 is not a whole number"]
    as_ints = {"encodings": arrays["encodings"].astype(np.int8)}
    wrong_dtype = oscar.check_upload(as_ints, [1, 3], (2, 3), 10, "float16")
    assert wrong_dtype == ["'encodings' is int8, expected float16"]
    stacked, classes = oscar.stack([(arrays, [1, 3]), ({"encodings": arrays["encodings"][:1]}, [0])])
    assert stacked.shape == (3, 2, 3) and classes.tolist() == [1, 3, 0]
