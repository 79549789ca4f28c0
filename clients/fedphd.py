"""FedPhD's client role ('train.fedphd'): train the edge's U-Net on this client's own images.

As the diffusion role, but the U-Net is rebuilt from the pruning plan the message carries (a pruned U-Net cannot
reload from its config), and during sparse training the norm term the message names is added to the loss. The
client never learns which edge it trains for, nor anything of the other clients.
"""

from __future__ import annotations

import json

from flwr.app import Context, Message

from clients.diffusion import train_unet
from fedgen import fedphd
from fedgen.diffusion.pruning import apply_plan
from strategies.fedphd import PRUNING_PLAN, SPARSE_LAMBDA


def train(msg: Message, context: Context) -> Message:
    config = msg.content["config"]
    plan = json.loads(str(config.get(PRUNING_PLAN, "[]")))
    sparse = [fedphd.sparse_penalty(float(config[SPARSE_LAMBDA]))] if SPARSE_LAMBDA in config else []
    return train_unet(msg, context, lambda model: apply_plan(model, plan), sparse)
