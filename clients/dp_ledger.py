"""A client's privacy ledger, shared by the private roles (FedDDPM's feature denoiser, the diffusion task's U-Net):
where what the client has spent so far is kept (on its own disk), locked while a round is charged; the charge and
its refusal over the client's budget are :mod:`fedgen.privacy.accountant`'s.

The ledger belongs to the client, not to anything the server names:
- a node with a 'state-dir' in its node config (a SuperNode; `fedgen deploy up` gives every node one) keeps one
  ledger there, ``dp-spent-node.json``, which every private round on that node charges, whatever the experiment,
  its name, seed or partitioning: the node's data is the node's;
- without one (simulation), the ledger lives in the folder the server names for the run (the run folder's
  client_state: a simulated federation is its run's), keyed by a fingerprint of the client's training examples.
The budget is the smaller of the server's request (``dp.epsilon``) and the node's own cap: the node config's
'dp-epsilon-max' (which needs a state-dir: a cap on a ledger the server could move would be no cap), or in simulation
the client processes' environment variable ``FEDGEN_DP_EPSILON_MAX``; a server cannot raise it. A round is charged
before it trains, under a file lock, so two runs on one node cannot both spend the same remainder.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message

from clients import state as client_state
from fedgen.config import DpConfig
from fedgen.data import ImageSet
from fedgen.privacy import accountant
from fedgen.privacy.accountant import BudgetExhausted, Plan, Spent
from fedgen.results import write_atomic

LEDGER = "dp-spent"
NODE_LEDGER = f"{LEDGER}-node"
"""The one ledger of a node that keeps a state-dir."""
NODE_CAP = "dp-epsilon-max"
"""The node config key of a node's own epsilon cap."""
NODE_CAP_ENV = "FEDGEN_DP_EPSILON_MAX"
"""Its simulation equivalent: the client processes' environment."""


def fingerprint(data: ImageSet) -> str:
    """What identifies a simulated client's data: a hash of its training images and labels."""
    digest = hashlib.sha256(data.labels.tobytes())
    digest.update(data.images.tobytes())
    return digest.hexdigest()[:16]


def node_cap(context: Context) -> float | None:
    """The node's own epsilon cap, if it sets one."""
    value = context.node_config.get(NODE_CAP, os.environ.get(NODE_CAP_ENV))
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"the node's {NODE_CAP}={value!r} is not a number") from None


def _where(msg: Message, context: Context, data: ImageSet) -> tuple[Path | None, str]:
    """The ledger's folder (None: the node's context) and name."""
    if context.node_config.get("state-dir"):
        return Path(str(context.node_config["state-dir"])), NODE_LEDGER
    if NODE_CAP in context.node_config:
        raise BudgetExhausted(f"the node caps its privacy ({NODE_CAP}) but keeps no state-dir: its ledger would live "
                              "where the server says; give the node a state-dir in its node config")
    return client_state.state_folder(msg, context), f"{LEDGER}-{fingerprint(data)}"


@contextmanager
def _locked(folder: Path | None, name: str):
    if folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _load(context: Context, folder: Path | None, name: str) -> Spent:
    if folder is None:
        text = context.state.config_records.get(LEDGER, ConfigRecord()).get(name)
    else:
        path = folder / f"{name}.json"
        text = path.read_text() if path.exists() else None
    return Spent.from_dict(json.loads(text)) if text else Spent()


def _save(context: Context, folder: Path | None, name: str, spent: Spent) -> None:
    text = json.dumps(spent.to_dict())
    if folder is None:
        record = context.state.config_records.get(LEDGER, ConfigRecord())
        record[name] = text
        context.state.config_records[LEDGER] = record
    else:
        write_atomic(folder / f"{name}.json", text)


def charge(msg: Message, context: Context, data: ImageSet, pid: int, rnd: int, dp: DpConfig, plan: Plan) -> Spent:
    """Charge this round's ``plan`` to the ledger, before any training, and return the spending after it; raises
    :class:`BudgetExhausted` (charging nothing) when that is over the smaller of the server's ``dp.epsilon`` and the
    node's own cap (:func:`fedgen.privacy.accountant.charge`)."""
    folder, name = _where(msg, context, data)
    with _locked(folder, name):
        spent = _load(context, folder, name)
        cap = node_cap(context)
        after = accountant.charge(spent, plan, dp, {f"the node's own cap {NODE_CAP}={cap}": cap}, pid, rnd)
        if dp.private:
            _save(context, folder, name, after)
    return after
