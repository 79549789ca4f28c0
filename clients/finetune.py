"""The finetune role: train or evaluate a classifier on the client's own data.

Train replies carry the updated weights ('arrays') and 'metrics' with 'train-loss' and 'num-examples'; the terms a
strategy adds to local training (FedProx, FedDyn, SCAFFOLD, MOON) are :mod:`clients.local_update`'s.
"""

from __future__ import annotations

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict

from clients.common import client_data, server_round
from clients.local_update import LocalUpdate
from fedgen.models import classifier
from fedgen.train import client_seed, resolve_device
from fedgen.train import evaluate as evaluate_model
from fedgen.train import train as train_model
from fedgen.wire import DOMAIN_CORRECT, DOMAIN_COUNT, EVAL_ACC, EVAL_LOSS, MODEL_NAME, NUM_EXAMPLES, PARTITION_ID


def _model(cfg, fed, msg: Message) -> torch.nn.Module:
    """The architecture the message names (FedDF's groups), else the experiment's."""
    name = str(msg.content["config"].get(MODEL_NAME, cfg.model.name))
    return classifier(cfg, fed, name)


def train(msg: Message, context: Context) -> Message:
    cfg, fed, pid = client_data(msg, context)
    data, _ = fed.client(pid)
    device = resolve_device(cfg.device, cfg.deterministic)
    model = _model(cfg, fed, msg)
    update = LocalUpdate(msg, context, pid, model, len(data), device, cfg.strategy.name)
    seed = client_seed(cfg.seed, server_round(msg), pid)
    return update.reply(train_model(model, data, cfg.train, device, seed=seed, penalties=update.penalties))


def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received model on this client's local test split (overall and per domain)."""
    cfg, fed, pid = client_data(msg, context)
    _, test = fed.client(pid)
    model = _model(cfg, fed, msg)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    scores = evaluate_model(model, test, cfg.train.eval_batch_size, resolve_device(cfg.device, cfg.deterministic),
                            len(fed.domain_names))
    metrics = MetricRecord({
        EVAL_LOSS: scores.loss, EVAL_ACC: scores.accuracy, NUM_EXAMPLES: len(test), PARTITION_ID: pid,
        DOMAIN_CORRECT: scores.domain_correct.tolist(), DOMAIN_COUNT: scores.domain_total.tolist(),
    })
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
