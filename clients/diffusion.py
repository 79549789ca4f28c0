"""The diffusion role ('train.diffusion'): train the global class-conditional U-Net on this client's own images.

The reply carries the updated weights ('arrays') and 'metrics' with 'train-loss' and 'num-examples'; FedProx's
proximal term is applied here when the server's config asks for it ('proximal-mu').
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from clients.common import client_data, server_round
from fedgen import diffusion
from fedgen.diffusion.task import unet_fn
from fedgen.train import client_seed, proximal_penalty, resolve_device
from fedgen.wire import NUM_EXAMPLES, PROXIMAL_MU, TRAIN_LOSS


def train(msg: Message, context: Context) -> Message:
    cfg, fed, pid = client_data(msg, context)
    data, _ = fed.client(pid)
    device = resolve_device(cfg.device)
    model = unet_fn(cfg, fed)()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    mu = float(msg.content["config"].get(PROXIMAL_MU, 0.0))
    penalties = [proximal_penalty([p.detach().clone().to(device) for p in model.parameters()], mu)] if mu > 0 else []
    rnd = server_round(msg)
    result = diffusion.train(model, data, cfg.diffusion, device, client_seed(cfg.seed, rnd, pid), rnd, penalties)
    reply = RecordDict({
        "arrays": ArrayRecord(model.cpu().state_dict()),
        "metrics": MetricRecord({TRAIN_LOSS: result.loss, NUM_EXAMPLES: result.num_examples}),
    })
    return Message(content=reply, reply_to=msg)
