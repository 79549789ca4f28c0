"""The finetune role: train or evaluate a classifier on the client's own data.

Train replies carry the updated weights ('arrays') and 'metrics' with 'train-loss' and 'num-examples'.
The server's config may ask for FedProx ('proximal-mu') or FedDyn ('feddyn-alpha', and 'feddyn-mean-examples' when
alpha is scaled by the client's data share); FedDyn's per-client gradient state stays on the client
(:mod:`clients.state`).
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from clients import state as client_state
from clients.common import client_data, server_round
from fedgen import feddyn
from fedgen.models import build_model
from fedgen.train import client_seed, proximal_penalty, resolve_device
from fedgen.train import evaluate as evaluate_model
from fedgen.train import train as train_model
from fedgen.wire import (
    DOMAIN_CORRECT,
    DOMAIN_COUNT,
    EVAL_ACC,
    EVAL_LOSS,
    FEDDYN_ALPHA,
    FEDDYN_MEAN_EXAMPLES,
    NUM_EXAMPLES,
    PARTITION_ID,
    PROXIMAL_MU,
    TRAIN_LOSS,
)

FEDDYN_STATE = "feddyn-grad"


def _model(cfg, fed, msg: Message) -> torch.nn.Module:
    model = build_model(cfg.model.name, fed.num_classes, cfg.model.norm, fed.image_shape[-1])
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model


def train(msg: Message, context: Context) -> Message:
    cfg, fed, pid = client_data(msg, context)
    data, _ = fed.client(pid)
    device = resolve_device(cfg.device)
    model = _model(cfg, fed, msg)
    global_params = [p.detach().clone().to(device) for p in model.parameters()]
    config = msg.content["config"]
    penalties = []
    mu = float(config.get(PROXIMAL_MU, 0.0))
    if mu > 0:
        penalties.append(proximal_penalty(global_params, mu))
    alpha = feddyn.client_alpha(float(config.get(FEDDYN_ALPHA, 0.0)), len(data), config.get(FEDDYN_MEAN_EXAMPLES))
    if alpha > 0:
        saved = client_state.load(msg, context, FEDDYN_STATE, pid)
        grads = [t.to(device) for t in saved] if saved else [torch.zeros_like(p) for p in global_params]
        penalties.append(feddyn.client_penalty(global_params, grads, alpha))
    seed = client_seed(cfg.seed, server_round(msg), pid)
    result = train_model(model, data, cfg.train, device, seed=seed, penalties=penalties)
    if alpha > 0:
        local = [p.detach() for p in model.parameters()]
        grads = feddyn.client_state_update(grads, local, global_params, alpha)
        client_state.save(msg, context, FEDDYN_STATE, pid, grads)
    reply = RecordDict(
        {
            "arrays": ArrayRecord(model.cpu().state_dict()),
            "metrics": MetricRecord({TRAIN_LOSS: result.loss, NUM_EXAMPLES: result.num_examples}),
        }
    )
    return Message(content=reply, reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received model on this client's local test split (overall and per domain)."""
    cfg, fed, pid = client_data(msg, context)
    _, test = fed.client(pid)
    scores = evaluate_model(_model(cfg, fed, msg), test, cfg.train.eval_batch_size, resolve_device(cfg.device),
                            len(fed.domain_names))
    metrics = MetricRecord({
        EVAL_LOSS: scores.loss, EVAL_ACC: scores.accuracy, NUM_EXAMPLES: len(test), PARTITION_ID: pid,
        DOMAIN_CORRECT: scores.domain_correct.tolist(), DOMAIN_COUNT: scores.domain_total.tolist(),
    })
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
