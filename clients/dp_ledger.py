"""A client's privacy ledger, shared by the private roles (FedDDPM's feature denoiser, the diffusion task's U-Net):
what the client has spent so far on its data, on its own disk, and the charge of a round, refused when it would
exceed the client's budget.

The ledger belongs to the data, not to anything the server names: it is keyed by a fingerprint of the client's
training examples (images and labels), so the same data under a renamed experiment, another seed of the same
partition or another strategy keeps spending one budget. The budget is the smaller of the server's request
(``dp.epsilon``) and the node's own cap: the node config's 'dp-epsilon-max' (a SuperNode's ``--node-config``), or in
simulation the client processes' environment variable ``FEDGEN_DP_EPSILON_MAX``; a server cannot raise it.

The ledger lives in the node config's 'state-dir' when the SuperNode sets one (it outlives runs), else in the folder
the server names for the run (simulation: the run folder's client_state), else in the node's context.
"""

from __future__ import annotations

import hashlib
import json
import os

from flwr.app import ConfigRecord, Context, Message

from clients import state as client_state
from fedgen.config import DpConfig
from fedgen.data import ImageSet
from fedgen.privacy import gdp
from fedgen.privacy.dp_diffusion import Plan
from fedgen.results import write_atomic
from fedgen.wire import DP_EPSILON, DP_EPSILON_OPACUS, DP_SIGMA

LEDGER = "dp-spent"
NODE_CAP = "dp-epsilon-max"
"""The node config key of a node's own epsilon cap."""
NODE_CAP_ENV = "FEDGEN_DP_EPSILON_MAX"
"""Its simulation equivalent: the client processes' environment."""


class BudgetExhausted(RuntimeError):
    """The client's next round would spend more than its privacy budget."""


def fingerprint(data: ImageSet) -> str:
    """What identifies the client's data: a hash of its training images and labels."""
    digest = hashlib.sha256(data.labels.tobytes())
    digest.update(data.images.tobytes())
    return digest.hexdigest()[:16]


def _key(data: ImageSet) -> str:
    return f"{LEDGER}-{fingerprint(data)}"


def node_cap(context: Context) -> float | None:
    """The node's own epsilon cap, if it sets one."""
    value = context.node_config.get(NODE_CAP, os.environ.get(NODE_CAP_ENV))
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"the node's {NODE_CAP}={value!r} is not a number") from None


def load_spent(msg: Message, context: Context, data: ImageSet) -> gdp.Spent:
    folder = client_state.state_folder(msg, context)
    if folder is None:
        text = context.state.config_records.get(LEDGER, ConfigRecord()).get(_key(data))
    else:
        path = folder / f"{_key(data)}.json"
        text = path.read_text() if path.exists() else None
    return gdp.Spent.from_dict(json.loads(text)) if text else gdp.Spent()


def save_spent(msg: Message, context: Context, data: ImageSet, spent: gdp.Spent) -> None:
    text = json.dumps(spent.to_dict())
    folder = client_state.state_folder(msg, context)
    if folder is None:
        record = context.state.config_records.get(LEDGER, ConfigRecord())
        record[_key(data)] = text
        context.state.config_records[LEDGER] = record
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / f"{_key(data)}.json", text)


def charge(msg: Message, context: Context, data: ImageSet, pid: int, rnd: int, dp: DpConfig,
           plan: Plan) -> gdp.Spent:
    """The spending after this round's ``plan``; raises :class:`BudgetExhausted` (before any training) when that is
    over the smaller of the server's ``dp.epsilon`` and the node's own cap. Save it with :func:`save_spent` once the
    round has trained."""
    spent = load_spent(msg, context, data)
    after = spent.plus(plan.mu1, plan.mu2, plan.sigma, plan.q2, plan.steps2) if dp.private else spent
    caps = {f"the budget dp.epsilon={dp.epsilon}": dp.epsilon, f"the node's own cap {NODE_CAP}={node_cap(context)}":
            node_cap(context)}
    limits = {name: cap for name, cap in caps.items() if cap is not None}
    if limits:
        name, cap = min(limits.items(), key=lambda item: item[1])
        if after.epsilon(dp.delta) > cap * (1 + 1e-9):
            raise BudgetExhausted(
                f"client {pid}: round {rnd} would bring its epsilon from {spent.epsilon(dp.delta):.4g} to "
                f"{after.epsilon(dp.delta):.4g}, over {name} (delta {dp.delta}): it does not train")
    return after


def metrics(spent: gdp.Spent, plan: Plan, dp: DpConfig) -> dict[str, float]:
    """What a private reply reports: epsilon spent so far (GDP), phase II alone through opacus' RDP accountant, and
    this round's noise multiplier; nothing when non-private."""
    if not dp.private:
        return {}
    return {DP_EPSILON: spent.epsilon(dp.delta), DP_EPSILON_OPACUS: spent.opacus_epsilon(dp.delta),
            DP_SIGMA: plan.sigma}
