"""FedDDPM's private role ('train.dpdiffusion'): train the global feature denoiser on this client's features with
dp-promise's two phases (:mod:`fedgen.privacy.dp_diffusion`), within the client's privacy budget.

The message carries the frozen encoder and the denoiser's standardisation in its 'context' record and the denoiser
in 'arrays' (upload=weights; with upload=features, 'context' carries the denoiser too). The client extracts its
features with the encoder, bounds them into [-1, 1]^d, and trains. Before training it adds this round's charge to
what it has spent (a ledger on its own disk, per experiment name: every round it trained counts, aggregated or
not); if that would exceed ``dp.epsilon`` it refuses, with an error naming both.

The reply carries 'arrays' (the denoiser's weights, 'diffusion.denoiser.*'; or 'features' and 'labels':
``strategy.upload_per_class`` pseudo-features of every class sampled from the trained model, post-processing that
keeps the guarantee) and 'metrics': 'train-loss' (phase II's), 'num-examples', 'partition-id' and, when private,
'dp-epsilon' (spent so far, GDP), 'dp-epsilon-opacus' (phase II alone, opacus' RDP accountant) and 'dp-sigma'.
No feature, image or label of the client's data leaves.
"""

from __future__ import annotations

import json

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients import state as client_state
from clients.common import client_data, server_round
from fedgen import fedddpm, ldmlr
from fedgen.diffusion import features as fd
from fedgen.privacy import dp_diffusion, gdp
from fedgen.results import write_atomic
from fedgen.train import client_seed, resolve_device
from fedgen.wire import (
    CONTEXT_ARRAYS,
    DP_EPSILON,
    DP_EPSILON_OPACUS,
    DP_SIGMA,
    NUM_EXAMPLES,
    PARTITION_ID,
    PSEUDO_FEATURES,
    PSEUDO_LABELS,
    TRAIN_LOSS,
)

LEDGER = "dp-spent"


class BudgetExhausted(RuntimeError):
    """The client's next round would spend more than its privacy budget."""


def _ledger_key(name: str, pid: int) -> str:
    return f"{LEDGER}-{name}-p{pid}"


def load_spent(msg: Message, context: Context, name: str, pid: int) -> gdp.Spent:
    folder = client_state.state_folder(msg, context)
    if folder is None:
        record = context.state.config_records.get(LEDGER, ConfigRecord())
        text = record.get(_ledger_key(name, pid))
    else:
        path = folder / f"{_ledger_key(name, pid)}.json"
        text = path.read_text() if path.exists() else None
    return gdp.Spent.from_dict(json.loads(text)) if text else gdp.Spent()


def save_spent(msg: Message, context: Context, name: str, pid: int, spent: gdp.Spent) -> None:
    text = json.dumps(spent.to_dict())
    folder = client_state.state_folder(msg, context)
    if folder is None:
        record = context.state.config_records.get(LEDGER, ConfigRecord())
        record[_ledger_key(name, pid)] = text
        context.state.config_records[LEDGER] = record
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / f"{_ledger_key(name, pid)}.json", text)


def train(msg: Message, context: Context) -> Message:
    cfg, fed, pid = client_data(msg, context)
    rnd, dp, settings = server_round(msg), cfg.dp, cfg.strategy
    data, _ = fed.client(pid)
    device = resolve_device(cfg.device)
    model = fedddpm.model_fn(cfg, fed)()
    given = msg.content[CONTEXT_ARRAYS].to_torch_state_dict()
    if "arrays" in msg.content.array_records:
        given |= msg.content["arrays"].to_torch_state_dict()
    model.load_state_dict(given)
    scheduler = fd.feature_scheduler(cfg.ldmlr)
    z, y = ldmlr.extract(model, data, cfg.train.eval_batch_size, device)
    zn = fedddpm.bounded(model.diffusion.cpu(), z)
    plan = dp_diffusion.plan(len(y), dp, cfg.rounds, zn.shape[1], dp_diffusion.abar_at(scheduler, dp.split_step))
    spent = load_spent(msg, context, cfg.name, pid)
    after = spent.plus(plan.mu1, plan.mu2, plan.sigma, plan.q2, plan.steps2) if dp.private else spent
    if dp.epsilon is not None and after.epsilon(dp.delta) > dp.epsilon * (1 + 1e-9):
        raise BudgetExhausted(
            f"client {pid}: round {rnd} would bring its epsilon from {spent.epsilon(dp.delta):.4g} to "
            f"{after.epsilon(dp.delta):.4g}, over the budget dp.epsilon={dp.epsilon} (delta {dp.delta}): it does not "
            "train")
    gen = torch.Generator().manual_seed(client_seed(cfg.seed, rnd, pid))
    losses = dp_diffusion.train_two_phase(model.diffusion, zn, y, plan, dp, scheduler, cfg.ldmlr.snr_gamma, device,
                                          gen)
    save_spent(msg, context, cfg.name, pid, after)
    metrics = {TRAIN_LOSS: losses["dp/loss-phase2"], NUM_EXAMPLES: len(y), PARTITION_ID: pid}
    if dp.private:
        metrics |= {DP_EPSILON: after.epsilon(dp.delta), DP_EPSILON_OPACUS: after.opacus_epsilon(dp.delta),
                    DP_SIGMA: plan.sigma}
    if settings.upload == "weights":
        arrays = {f"diffusion.denoiser.{k}": v.cpu() for k, v in model.diffusion.denoiser.state_dict().items()}
    else:
        fake, labels = fedddpm.generate(model.diffusion, scheduler, settings.upload_per_class, fed.num_classes,
                                        cfg.ldmlr.sampling_steps, gen)
        arrays = {PSEUDO_FEATURES: fake, PSEUDO_LABELS: labels}
    content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
