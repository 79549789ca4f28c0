"""A whole OSCAR simulation against the real ClientApp, in process, with tiny random foundation models."""

import json

import numpy as np
import pytest
from flwr.app import MessageType
from inprocess import InProcessGrid

from clients.app import app
from simulations.server_app import run_experiment


@pytest.fixture
def oscar_cfg(tiny_cfg, tiny_models):
    def make(**extra):
        return tiny_cfg(
            rounds=1,
            strategy={"name": "oscar", "fraction_evaluate": 1.0},
            foundation={"profile": "pretrained",
                        "captioner": {"kind": "blip", "path": str(tiny_models / "blip"), "max_new_tokens": 6},
                        "generator": {"path": str(tiny_models / "sd"), "steps": 2, "size": 32, "batch_size": 50}},
            oscar={"images_per_encoding": 5, "epochs": 2, "lr": 0.01},
            **extra,
        )

    return make


def test_oscar_round_uploads_only_category_encodings(oscar_cfg, tiny_models, tmp_path):
    cfg = oscar_cfg()
    grid = InProcessGrid(app, cfg.data.num_clients)
    summary = run_experiment(grid, cfg, tmp_path / "run")
    assert summary["status"] == "finished" and summary["rounds"] == 1
    # what the clients sent in the encode round: per-class encodings and counts, nothing else
    encode_msgs = [m for m in grid.delivered if m.metadata.message_type == f"{MessageType.TRAIN}.encode"]
    assert len(encode_msgs) == 3 and all(not m.content.array_records for m in encode_msgs)  # no model sent either
    client_0 = InProcessGrid(app, 3)
    (reply,) = client_0.send_and_receive([encode_msgs[0]])
    content = reply.content
    assert set(content.keys()) == {"encodings", "metrics"} and not content.config_records
    (enc,) = content["encodings"].values()
    assert tuple(enc.shape) == (10, 16, 32)  # (classes, sequence, hidden) of the text encoder: no image, no weights
    assert enc.dtype == "float16"
    metrics = content["metrics"]
    assert set(metrics.keys()) == {"class-ids", "counts", "num-examples", "caption-seconds", "encode-seconds"}
    assert sum(metrics["counts"]) == metrics["num-examples"]  # no caption (or any text) leaves the client
    assert list(metrics["class-ids"]) == list(range(10))

    rows = [json.loads(r) for r in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    assert rows[1]["train/generated-images"] == 5 * sum(len(h) - h.count(0) for h in
                                                         summary["label_histograms"].values())
    assert "fedeval/acc-client-0" in rows[1] and "fedeval/acc-domain-plain" in rows[1]
    assert summary["foundation_models"] == {"profile": "pretrained", "captioner": f"blip:{tiny_models / 'blip'}",
                                            "generator": str(tiny_models / "sd")}
    assert summary["upload_per_client_pct_of_model"] < 1.0
    assert (tmp_path / "run" / "generated.png").stat().st_size > 0


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
