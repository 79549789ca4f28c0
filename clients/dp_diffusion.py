"""FedDDPM's private role ('train.dpdiffusion'): train the global feature denoiser on this client's features with
dp-promise's two phases (:mod:`fedgen.privacy.dp_diffusion`), within the client's privacy budget.

The message carries the frozen encoder and the denoiser's standardisation in its 'context' record and the denoiser
in 'arrays' (upload=weights; with upload=features, 'context' carries the denoiser too). The client extracts its
features with the encoder, bounds them into [-1, 1]^d, and trains. Before training it adds this round's charge to
what it has spent (:mod:`clients.dp_ledger`); if that would exceed ``dp.epsilon`` it refuses, with an error naming
both.

The reply carries 'arrays' (the denoiser's weights, 'diffusion.denoiser.*'; or 'features' and 'labels':
``strategy.upload_per_class`` pseudo-features of every class sampled from the trained model, post-processing that
keeps the guarantee) and 'metrics': 'train-loss' (phase II's), 'num-examples', 'partition-id' and, when private,
'dp-epsilon' (spent so far, GDP), 'dp-epsilon-opacus' (phase II alone, opacus' RDP accountant) and 'dp-sigma'.
No feature, image or label of the client's data leaves.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from clients import dp_ledger
from clients.common import client_data, server_round
from fedgen import fedddpm, ldmlr
from fedgen.diffusion import features as fd
from fedgen.privacy import accountant, dp_diffusion
from fedgen.train import client_seed, resolve_device
from fedgen.wire import (
    CONTEXT_ARRAYS,
    NUM_EXAMPLES,
    PARTITION_ID,
    TRAIN_LOSS,
)
from strategies.fedddpm import PSEUDO_FEATURES, PSEUDO_LABELS


def train(msg: Message, context: Context) -> Message:
    cfg, fed, pid = client_data(msg, context)
    rnd, dp, settings = server_round(msg), cfg.dp, cfg.strategy
    data, _ = fed.client(pid)
    device = resolve_device(cfg.device, cfg.deterministic)
    model = fedddpm.model_fn(cfg, fed)()
    given = msg.content[CONTEXT_ARRAYS].to_torch_state_dict()
    if "arrays" in msg.content.array_records:
        given |= msg.content["arrays"].to_torch_state_dict()
    model.load_state_dict(given)
    scheduler = fd.feature_scheduler(cfg.ldmlr)
    z, y = ldmlr.extract(model, data, cfg.train.eval_batch_size, device)
    zn = fedddpm.bounded(model.diffusion.cpu(), z)
    plan = accountant.plan(len(y), dp, cfg.rounds, zn.shape[1], accountant.abar_at(scheduler, dp.split_step))
    after = dp_ledger.charge(msg, context, data, pid, rnd, dp, plan)
    gen = torch.Generator().manual_seed(client_seed(cfg.seed, rnd, pid))
    losses = dp_diffusion.train_two_phase(model.diffusion, zn, y, plan, dp, scheduler, cfg.ldmlr.snr_gamma, device,
                                          gen)
    metrics = {TRAIN_LOSS: losses["dp/loss-phase2"], NUM_EXAMPLES: len(y), PARTITION_ID: pid,
               **accountant.reply_metrics(after, plan, dp)}
    if settings.upload == "weights":
        arrays = {f"diffusion.denoiser.{k}": v.cpu() for k, v in model.diffusion.denoiser.state_dict().items()}
    else:
        fake, labels = fedddpm.generate(model.diffusion, scheduler, settings.upload_per_class, fed.num_classes,
                                        cfg.ldmlr.sampling_steps, gen)
        arrays = {PSEUDO_FEATURES: fake, PSEUDO_LABELS: labels}
    content = RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
