"""A whole OSCAR simulation against the real ClientApp, in process, with tiny random foundation models."""

import json

import numpy as np
import pytest
from inprocess import InProcessGrid

from clients.app import app
from fedgen.comm import record_bytes
from fedgen.data import load_federation
from simulations.server_app import run_experiment
from strategies.oscar import ENCODE


@pytest.fixture
def oscar_cfg(tiny_cfg, tiny_models):
    def make(**extra):
        return tiny_cfg(
            rounds=1,
            strategy={"name": "oscar", "fraction_evaluate": 1.0, "images_per_encoding": 5, "epochs": 2, "lr": 0.01},
            foundation={"profile": "pretrained",
                        "captioner": {"kind": "blip", "path": str(tiny_models / "blip"), "max_new_tokens": 6},
                        "generator": {"path": str(tiny_models / "sd"), "steps": 2, "size": 32, "batch_size": 50}},
            **extra,
        )

    return make


def test_oscar_round_uploads_only_category_encodings(oscar_cfg, tiny_models, tmp_path):
    cfg = oscar_cfg()
    grid = InProcessGrid(app, cfg.data.num_clients)
    summary = run_experiment(grid, cfg, tmp_path / "run")
    assert summary["status"] == "finished" and summary["rounds"] == 1
    sent = [m for m in grid.delivered if m.metadata.message_type == ENCODE]
    assert len(sent) == 3 and all(not m.content.array_records for m in sent)  # no model sent either
    # what the server received in this run's encode round: per-class encodings and numbers, nothing else
    replies = [r for r in grid.received if r.metadata.reply_to_message_id in
               {m.metadata.message_id for m in sent}]
    assert len(replies) == 3
    for reply in replies:
        content = reply.content
        assert set(content.keys()) == {"encodings", "metrics"} and not content.config_records  # no text record
        (enc,) = content["encodings"].values()
        assert tuple(enc.shape) == (10, 16, 32)  # (classes, sequence, hidden) of the text encoder: no image/weights
        assert enc.dtype == "float16"
        metrics = content["metrics"]
        assert set(metrics.keys()) == {"class-ids", "caption-seconds", "encode-seconds"}  # no counts: unused
        assert all(isinstance(v, int | float) or all(isinstance(x, int | float) for x in v)
                   for v in metrics.values())  # numbers only: no caption, no string of any kind
        assert list(metrics["class-ids"]) == list(range(10))
        # the array header and the numbers above: ~400 B; captions would add ~50 B for each of ~2,000 images
        assert record_bytes(content) < enc.numpy().nbytes + 1_000

    rows = [json.loads(r) for r in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    fed = load_federation(cfg.data, cfg.seed)
    assert "label_histograms" not in summary  # OSCAR's server never asks for them
    assert rows[1]["train/generated-images"] == 5 * sum(len(np.unique(fed.client(k)[0].labels)) for k in range(3))
    assert "fedeval/acc-client-0" in rows[1] and "fedeval/acc-domain-plain" in rows[1]
    assert summary["foundation_models"] == {"profile": "pretrained", "captioner": f"blip:{tiny_models / 'blip'}",
                                            "generator": str(tiny_models / "sd")}
    assert summary["upload_per_client_pct_of_model"] < 1.0
    assert (tmp_path / "run" / "generated.png").stat().st_size > 0


def test_oscar_leaves_the_shared_config_record_alone(tmp_path):
    """One config record serves configure_train and configure_evaluate: each message gets a copy with its round."""
    from flwr.app import ArrayRecord, ConfigRecord

    from fedgen.wire import SERVER_ROUND
    from strategies.oscar import Oscar

    grid = InProcessGrid(app, 2)
    strategy = Oscar(None, None, None, None, 10, [], [], 32, fraction_train=1.0, min_train_nodes=2,
                     fraction_evaluate=1.0, device=None, seed=0, out_dir=tmp_path)
    config = ConfigRecord({"experiment": "{}"})
    train = strategy.configure_train(1, ArrayRecord(), config, grid)
    evaluate = strategy.configure_evaluate(2, ArrayRecord(), config, grid)
    assert dict(config) == {"experiment": "{}"}
    assert [m.content["config"][SERVER_ROUND] for m in train + evaluate] == [1, 1, 2, 2]


def test_bad_encoding_uploads_are_rejected(oscar_cfg, tmp_path, monkeypatch):
    from clients import encode

    original = encode.encode

    def wrong_shape(msg, context):
        reply = original(msg, context)
        if int(context.node_config["partition-id"]) == 1:
            from flwr.app import Array

            reply.content["encodings"]["encodings"] = Array(np.zeros((10, 3, 3), np.float16))
        return reply

    monkeypatch.setattr(encode, "encode", wrong_shape)
    summary = run_experiment(InProcessGrid(app, 3), oscar_cfg(), tmp_path / "run")
    (failure,) = summary["failures"]
    assert failure["client"] == 1 and "expected [10, 16, 32]" in failure["reason"]
    assert summary["status"] == "finished"


def test_generated_images_are_resized_to_the_dataset_size_as_they_come(tiny_models):
    """oscar_real generates at 512 and its clients test at 224: each batch is resized as it is generated."""
    import torch

    from fedgen.foundation import Generator

    gen = Generator(str(tiny_models / "sd"), "ddim", torch.device("cpu"), torch.float32)
    embeds = torch.randn(2, 16, gen.pipe.text_encoder.config.hidden_size)
    images = gen.generate(embeds, 3, 2, 3.0, 32, 4, seed=0, progress=False, out_size=16)
    assert images.shape == (6, 16, 16, 3) and images.dtype == np.uint8
    same = gen.generate(embeds, 3, 2, 3.0, 32, 4, seed=0, progress=False)
    assert same.shape == (6, 32, 32, 3)
