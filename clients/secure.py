"""Secure aggregation on the client: Flower's ``secaggplus_mod`` around a *secure role*.

SecAgg+'s four stages all arrive as messages of type 'train' carrying its stage record, so the ClientApp's 'train'
handler sends those here (:func:`is_secagg`). At the stage that collects masked vectors, the mod calls what the
server's instructions name (``wire.SECURE_ROLE``):
- 'train': the task's training role on the model sent (FedAvg under SecAgg+): the trained floating-point arrays go
  back, masked, weighted by the client's examples;
- a secure role (a registered method's ``secure_roles``): a function ``(config, context) -> list of int64 arrays``
  whose vectors are masked before they leave. A secure role runs only inside the protocol: asked directly, it
  refuses, so a client's vector never leaves in the clear.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from importlib import import_module

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

import strategies
from fedgen.compat.flower import (
    RECORD_KEY_CONFIGS,
    Code,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
    secaggplus_mod,
)
from fedgen.compat.flower import recorddict_compat as compat
from fedgen.privacy.secagg import summed_keys
from fedgen.wire import NUM_EXAMPLES, SECURE_KEYS, SECURE_ROLE

_inside = ContextVar("inside_secagg", default=False)


def is_secagg(msg: Message) -> bool:
    return RECORD_KEY_CONFIGS in msg.content.config_records


def require_secagg(what: str) -> None:
    """Refuse to compute ``what`` outside SecAgg+: it must only leave masked."""
    if not _inside.get():
        raise PermissionError(f"{what} is only sent masked, under SecAgg+; this request came outside the protocol")


def _train_update(msg: Message, fitins, config: ConfigRecord, context: Context) -> FitRes:
    """The task's own training role on the model the FitIns carries; its floating-point arrays go back."""
    keys = json.loads(str(config[SECURE_KEYS]))
    arrays = dict(zip(keys, parameters_to_ndarrays(fitins.parameters), strict=True))
    msg.content = RecordDict({"arrays": ArrayRecord({k: torch.from_numpy(a) for k, a in arrays.items()}),
                              "config": config})
    module, func = strategies.client_roles()[MessageType.TRAIN].split(":")
    reply = getattr(import_module(module), func)(msg, context).content
    trained = {k: a.numpy() for k, a in reply["arrays"].items()}
    return FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters([trained[k] for k in summed_keys(arrays)]),
                  int(reply["metrics"][NUM_EXAMPLES]), {})


def _inner(msg: Message, context: Context) -> Message:
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    config = ConfigRecord(dict(fitins.config))
    name = str(config.get(SECURE_ROLE, ""))
    roles = strategies.secure_roles()
    if name == MessageType.TRAIN:
        fitres = _train_update(msg, fitins, config, context)
    elif name in roles:
        module, func = roles[name].split(":")
        token = _inside.set(True)
        try:
            vectors = getattr(import_module(module), func)(config, context)
        finally:
            _inside.reset(token)
        fitres = FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters([np.asarray(v) for v in vectors]), 1, {})
    else:
        raise ValueError(f"unknown secure role {name!r} (known: {', '.join([MessageType.TRAIN, *roles])})")
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


def answer(msg: Message, context: Context) -> Message:
    """One SecAgg+ stage."""
    return secaggplus_mod(msg, context, _inner)
