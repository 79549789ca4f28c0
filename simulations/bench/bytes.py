"""``fedgen bench bytes``: what each strategy sends per client and round, and the size of OSCAR's upload against a
model's."""

from __future__ import annotations

from pathlib import Path

import torch

from simulations.bench.harness import DIGITS, run_fedgen


def oscar_upload_bytes(classes: int, seq: int, hidden: int, dtype: str) -> int:
    """The bytes of one OSCAR reply (encodings, class ids, timings) for a text encoder of this shape."""
    from fedgen import oscar
    from fedgen.comm import record_bytes

    means = {c: (torch.zeros(seq, hidden), 100) for c in range(classes)}
    return record_bytes(oscar.reply_content(means, dtype, caption_seconds=0.0, encode_seconds=0.0))


def bytes_(work: Path) -> dict:
    from flwr.app import ArrayRecord

    from fedgen.foundation.embedded import MAX_TOKENS
    from fedgen.models import build_model
    from strategies import methods

    per_strategy = {}
    for name in [n for n, m in methods().items() if not m.foundation]:  # those the digits config runs as it is
        res = run_fedgen(DIGITS, [f"strategy.name={name}", "rounds=2"], work / f"bytes-{name}")
        s = res["summary"]
        n = s["num_clients"]
        fed_rounds = [r for r in res["rounds"] if r["round"] > 0]
        per_strategy[name] = {
            "up_per_client_per_round": sum(r["bytes_up"] for r in fed_rounds) / len(fed_rounds) / n,
            "down_per_client_per_round": sum(r["bytes_down"] for r in fed_rounds) / len(fed_rounds) / n,
        }
    cnn = ArrayRecord(build_model("cnn", 10).state_dict()).count_bytes()
    resnet = ArrayRecord(build_model("resnet18", 10).state_dict()).count_bytes()
    embedded = oscar_upload_bytes(10, MAX_TOKENS, 32, "float16")  # the embedded profile's CLIP: 16 tokens x 32
    sd = oscar_upload_bytes(10, 77, 768, "float16")  # Stable Diffusion v1.x's CLIP ViT-L/14: 77 tokens x 768
    return {
        "setup": "digits-domains, 6 clients, 2 rounds per strategy; OSCAR's reply measured on its wire format "
                 "(10 classes, float16) for the embedded text encoder and for SD v1.x's",
        "per_strategy": per_strategy,
        "fedavg_upload_bytes": {"cnn": cnn, "resnet18": resnet},
        "oscar_upload_bytes": {"embedded_16x32": embedded, "sd_v1_77x768": sd},
        "oscar_pct_of_upload": {
            "embedded_vs_cnn": 100 * embedded / cnn, "embedded_vs_resnet18": 100 * embedded / resnet,
            "sd_v1_vs_resnet18": 100 * sd / resnet,
        },
    }
