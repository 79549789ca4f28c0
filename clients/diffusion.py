"""The diffusion role ('train.diffusion'): train the global class-conditional U-Net on this client's own images.

The reply carries the updated weights ('arrays') and 'metrics' with 'train-loss' and 'num-examples'; the terms a
strategy adds to local training (FedProx, SCAFFOLD, MOON on the U-Net's mid block) are
:mod:`clients.local_update`'s.

With ``dp.epsilon`` or ``dp.sigma`` set, the client trains with dp-promise's two phases instead
(:func:`fedgen.diffusion.train_private`: phase I unconditional on t >= dp.split_step, phase II DP-SGD through opacus),
within its privacy budget: before training it adds this round's charge to its ledger (:mod:`clients.dp_ledger`) and
refuses, naming both, if that would exceed ``dp.epsilon``. The reply then also carries 'dp-epsilon' (spent so far,
GDP), 'dp-epsilon-opacus' (phase II alone, opacus' RDP accountant) and 'dp-sigma'; the weights leave as before, and
nothing else: no image, label or gradient.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message
from torch import nn

from clients.common import client_data, server_round
from clients.local_update import LocalUpdate
from fedgen import diffusion
from fedgen.diffusion.task import image_size, unet_fn
from fedgen.train import Penalty, client_seed, resolve_device


def train(msg: Message, context: Context) -> Message:
    return train_unet(msg, context)


def train_unet(msg: Message, context: Context, architecture: Callable[[nn.Module], nn.Module] = lambda m: m,
               penalties: list[Penalty] = ()) -> Message:
    """Local training of the message's U-Net; ``architecture`` turns the experiment's U-Net into the one the message
    carries (FedPhD's pruned one), ``penalties`` are added to those of :class:`LocalUpdate`."""
    cfg, fed, pid = client_data(msg, context)
    data, _ = fed.client(pid)
    device = resolve_device(cfg.device, cfg.deterministic)
    model = architecture(unet_fn(cfg, fed)())
    update = LocalUpdate(msg, context, pid, model, len(data), device, cfg.strategy.name)
    rnd = server_round(msg)
    seed = client_seed(cfg.seed, rnd, pid)
    if not cfg.dp.private:
        return update.reply(diffusion.train(model, data, cfg.diffusion, device, seed, rnd,
                                            [*update.penalties, *penalties]))
    from clients import dp_ledger
    from fedgen.privacy import accountant

    plan = diffusion.private_plan(len(data), cfg, image_size(cfg, fed))
    after = dp_ledger.charge(msg, context, data, pid, rnd, cfg.dp, plan)
    result = diffusion.train_private(model, data, cfg, plan, device, seed, [*update.penalties, *penalties])
    return update.reply(result, accountant.reply_metrics(after, plan, cfg.dp))
