"""The diffusion role ('train.diffusion'): train the global class-conditional U-Net on this client's own images.

The reply carries the updated weights ('arrays') and 'metrics' with 'train-loss' and 'num-examples'; the terms a
strategy adds to local training (FedProx, SCAFFOLD, MOON on the U-Net's mid block) are
:mod:`clients.local_update`'s.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message
from torch import nn

from clients.common import client_data, server_round
from clients.local_update import LocalUpdate
from fedgen import diffusion
from fedgen.diffusion.task import unet_fn
from fedgen.train import Penalty, client_seed, resolve_device


def train(msg: Message, context: Context) -> Message:
    return train_unet(msg, context)


def train_unet(msg: Message, context: Context, architecture: Callable[[nn.Module], nn.Module] = lambda m: m,
               penalties: list[Penalty] = ()) -> Message:
    """Local training of the message's U-Net; ``architecture`` turns the experiment's U-Net into the one the message
    carries (FedPhD's pruned one), ``penalties`` are added to those of :class:`LocalUpdate`."""
    cfg, fed, pid = client_data(msg, context)
    data, _ = fed.client(pid)
    device = resolve_device(cfg.device)
    model = architecture(unet_fn(cfg, fed)())
    update = LocalUpdate(msg, context, pid, model, len(data), device)
    rnd = server_round(msg)
    result = diffusion.train(model, data, cfg.diffusion, device, client_seed(cfg.seed, rnd, pid), rnd,
                             [*update.penalties, *penalties])
    return update.reply(result)
