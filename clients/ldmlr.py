"""The LDMLR role ('train.ldmlr'): train the global classifier and its feature diffusion model on this client's own
images, as ``ldmlr.method`` says (:func:`fedgen.ldmlr.train`).

The reply carries the updated weights of both ('arrays': 'classifier.*' and 'diffusion.*') and 'metrics' with
'train-loss' (the classifier's cross-entropy on the real data) and 'num-examples'; no feature and no image leaves.
"""

from __future__ import annotations

from flwr.app import Context, Message

from clients.common import client_data, server_round
from clients.local_update import LocalUpdate
from fedgen import ldmlr
from fedgen.train import client_seed, resolve_device


def train(msg: Message, context: Context) -> Message:
    cfg, fed, pid = client_data(msg, context)
    data, _ = fed.client(pid)
    device = resolve_device(cfg.device, cfg.deterministic)
    model = ldmlr.model_fn(cfg, fed)()
    update = LocalUpdate(msg, context, pid, model, len(data), device, cfg.strategy.name)
    seed = client_seed(cfg.seed, server_round(msg), pid)
    return update.reply(ldmlr.train(model, data, cfg, device, seed, update.penalties))
