"""A client's privacy ledger, shared by the private roles (FedDDPM's feature denoiser, the diffusion task's U-Net):
what it has spent so far, on its own disk (per experiment name: every round it trained counts, aggregated or not),
and the charge of a round, refused when it would exceed ``dp.epsilon``.

The ledger is the node config's 'state-dir' when the SuperNode sets one, else the folder the server names for the
run (simulation); without either, the node's context.
"""

from __future__ import annotations

import json

from flwr.app import ConfigRecord, Context, Message

from clients import state as client_state
from fedgen.config import DpConfig
from fedgen.privacy import gdp
from fedgen.privacy.dp_diffusion import Plan
from fedgen.results import write_atomic
from fedgen.wire import DP_EPSILON, DP_EPSILON_OPACUS, DP_SIGMA

LEDGER = "dp-spent"


class BudgetExhausted(RuntimeError):
    """The client's next round would spend more than its privacy budget."""


def _key(name: str, pid: int) -> str:
    return f"{LEDGER}-{name}-p{pid}"


def load_spent(msg: Message, context: Context, name: str, pid: int) -> gdp.Spent:
    folder = client_state.state_folder(msg, context)
    if folder is None:
        record = context.state.config_records.get(LEDGER, ConfigRecord())
        text = record.get(_key(name, pid))
    else:
        path = folder / f"{_key(name, pid)}.json"
        text = path.read_text() if path.exists() else None
    return gdp.Spent.from_dict(json.loads(text)) if text else gdp.Spent()


def save_spent(msg: Message, context: Context, name: str, pid: int, spent: gdp.Spent) -> None:
    text = json.dumps(spent.to_dict())
    folder = client_state.state_folder(msg, context)
    if folder is None:
        record = context.state.config_records.get(LEDGER, ConfigRecord())
        record[_key(name, pid)] = text
        context.state.config_records[LEDGER] = record
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / f"{_key(name, pid)}.json", text)


def charge(msg: Message, context: Context, name: str, pid: int, rnd: int, dp: DpConfig, plan: Plan) -> gdp.Spent:
    """The spending after this round's ``plan``; raises :class:`BudgetExhausted` (before any training) when that is
    over the budget. Save it with :func:`save_spent` once the round has trained."""
    spent = load_spent(msg, context, name, pid)
    after = spent.plus(plan.mu1, plan.mu2, plan.sigma, plan.q2, plan.steps2) if dp.private else spent
    if dp.epsilon is not None and after.epsilon(dp.delta) > dp.epsilon * (1 + 1e-9):
        raise BudgetExhausted(
            f"client {pid}: round {rnd} would bring its epsilon from {spent.epsilon(dp.delta):.4g} to "
            f"{after.epsilon(dp.delta):.4g}, over the budget dp.epsilon={dp.epsilon} (delta {dp.delta}): it does not "
            "train")
    return after


def metrics(spent: gdp.Spent, plan: Plan, dp: DpConfig) -> dict[str, float]:
    """What a private reply reports: epsilon spent so far (GDP), phase II alone through opacus' RDP accountant, and
    this round's noise multiplier; nothing when non-private."""
    if not dp.private:
        return {}
    return {DP_EPSILON: spent.epsilon(dp.delta), DP_EPSILON_OPACUS: spent.opacus_epsilon(dp.delta),
            DP_SIGMA: plan.sigma}
