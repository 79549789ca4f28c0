"""GPT-FL's client roles: the label names a client holds, in the clear ('query.labels', labels=plain) or as an IBLT
that leaves only masked, under SecAgg+ (the secure role 'gptfl.label-table', labels=private). Nothing else about the
client's data leaves: no counts per class, no examples."""

from __future__ import annotations

import json

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients.common import client_data
from clients.secure import require_secagg
from fedgen import gptfl
from fedgen.privacy import iblt
from strategies.gptfl import IBLT_SPEC, LABEL_NAMES


def labels(msg: Message, context: Context) -> Message:
    cfg, fed, pid = client_data(msg, context)
    if cfg.strategy.labels != "plain":
        raise PermissionError("this experiment collects labels privately (strategy.labels=private): they are only "
                              "sent as an IBLT under SecAgg+")
    data, _ = fed.client(pid)
    names = gptfl.label_names(data.labels, fed.class_names)
    return Message(RecordDict({"labels": ConfigRecord({LABEL_NAMES: names}),
                               "metrics": MetricRecord({"label-count": len(names)})}), reply_to=msg)


def label_table(config: ConfigRecord, context: Context) -> list[np.ndarray]:
    """The IBLT of this client's label names, in the layout the server sent; only ever sent masked."""
    require_secagg("the IBLT of a client's labels")
    _, fed, pid = client_data(config, context)
    data, _ = fed.client(pid)
    spec = iblt.Spec(*(int(v) for v in json.loads(str(config[IBLT_SPEC]))))
    return [iblt.encode(gptfl.label_names(data.labels, fed.class_names), spec)]
