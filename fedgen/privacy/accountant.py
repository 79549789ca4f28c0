"""The one owner of a client's privacy accounting (the README's privacy sections), in dp-promise's mu-GDP.

Everything that plans, composes, charges or reports privacy goes through here:

- :func:`plan`: a client's round (its Poisson rates, step counts, noise multiplier, calibrated so that the run's
  rounds spend exactly the budget, and its charge), for the feature denoiser and the image U-Net alike;
- :func:`compose`: rounds composed into what a client has spent (:class:`Spent`, the record its ledger keeps);
- :func:`charge`: a round's charge against the budget and the node's own caps (:mod:`clients.dp_ledger` stores the
  ledger, locks it and reads the node's cap);
- :func:`reply_metrics`: what a private reply reports;
- :func:`largest`: the largest epsilon reported, over a round's replies or a run's rows (each client reports its
  total so far, so the largest is what the most exposed client spent; a mean would understate it).

The formulas themselves (each phase's mu, the GDP duality, the calibration) are :mod:`fedgen.privacy.gdp`'s.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedgen.privacy import gdp
from fedgen.wire import DP_EPSILON, DP_EPSILON_OPACUS, DP_SIGMA

if TYPE_CHECKING:
    from fedgen.config import DpConfig


# --- planning ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """One client's round of private training: its sampling rates, step counts, noise and privacy charge."""

    q1: float
    steps1: int
    q2: float
    steps2: int
    sigma: float | None
    """The noise multiplier (None: non-private)."""
    mu1: float
    mu2: float


def abar_at(scheduler, step: int) -> float:
    """abar at the split S: the cumulative alpha of the last phase-II timestep's successor (the official
    ``alphas_cumprod[S - 1]``)."""
    return float(scheduler.alphas_cumprod[step - 1])


def plan(n: int, dp: DpConfig, rounds: int, dim: int, abar_s: float) -> Plan:
    """A client with ``n`` examples of dimension ``dim``: q = 1 / ceil(n / batch) and ``epochs * ceil(n / batch)``
    steps per phase (the official loaders' counts); sigma as configured, or calibrated so that ``rounds`` such rounds
    spend exactly the budget (a client trains in at most every round)."""
    if n < 1:
        raise ValueError("cannot train on an empty dataset")
    per1, per2 = math.ceil(n / dp.batch_size1), math.ceil(n / dp.batch_size2)
    q1, steps1, q2, steps2 = 1 / per1, dp.epochs1 * per1, 1 / per2, dp.epochs2 * per2
    mu1 = gdp.phase1_mu(q1, steps1, dim, abar_s)
    sigma = dp.sigma
    if sigma is None and dp.epsilon is not None:
        sigma = gdp.sigma_for(dp.epsilon, dp.delta, mu1 * math.sqrt(rounds), q2, steps2 * rounds)
    private = dp.private
    return Plan(q1, steps1, q2, steps2, sigma if private else None, mu1 if private else math.inf,
                gdp.phase2_mu(q2, steps2, sigma) if private else math.inf)


def check_clients(sizes: Iterable[int], dp: DpConfig, rounds: int, dim: int, abar_s: float) -> None:
    """Plan every client (``sizes``: their numbers of examples, by partition id) before any work; the first whose
    plan is refused (a phase I over the budget) is named."""
    for k, n in enumerate(sizes):
        try:
            plan(n, dp, rounds, dim, abar_s)
        except ValueError as err:
            raise ValueError(f"client {k}: {err}") from None


def phase1_unbounded(dim: int, abar_s: float, dp: DpConfig) -> ValueError | None:
    """The refusal of a phase I whose charge on data of dimension ``dim`` overflows a float (infinite: over any
    budget, whatever a client holds), or None."""
    mu1 = gdp.phase1_mu(1.0, 1, dim, abar_s)
    return gdp.phase1_over(mu1, dp.epsilon, dp.delta) if mu1 == float("inf") else None


# --- composition ---------------------------------------------------------------------------------------------------
@dataclass
class Spent:
    """A client's privacy spending, composed over the rounds it trained in (mu^2 adds up)."""

    mu1_sq: float = 0.0
    mu2_sq: float = 0.0
    phase2: list[tuple[float, float, int]] = field(default_factory=list)
    """(sigma, q, steps) of each round's DP-SGD, for opacus' own accountant."""

    @property
    def mu(self) -> float:
        return math.sqrt(self.mu1_sq + self.mu2_sq)

    def epsilon(self, delta: float) -> float:
        return gdp.epsilon_of(self.mu, delta)

    def plus(self, mu1: float, mu2: float, sigma: float | None, q2: float, steps2: int) -> Spent:
        """The spending after one more round."""
        history = self.phase2 + ([(sigma, q2, steps2)] if sigma is not None and steps2 else [])
        return Spent(self.mu1_sq + mu1**2, self.mu2_sq + mu2**2, history)

    def opacus_epsilon(self, delta: float) -> float:
        """Phase II alone through opacus' RDP accountant (a cross-check: it does not know phase I)."""
        from fedgen.compat.opacus import rdp_accountant

        if not self.phase2:
            return 0.0
        return float(rdp_accountant(self.phase2).get_epsilon(delta))

    def to_dict(self) -> dict:
        return {"mu1_sq": self.mu1_sq, "mu2_sq": self.mu2_sq, "phase2": [list(h) for h in self.phase2]}

    @classmethod
    def from_dict(cls, d: dict) -> Spent:
        return cls(float(d["mu1_sq"]), float(d["mu2_sq"]), [(float(s), float(q), int(n)) for s, q, n in d["phase2"]])


def compose(p: Plan, rounds: int, spent: Spent | None = None) -> Spent:
    """The spending after ``rounds`` rounds of plan ``p`` (on top of ``spent``), composed round by round as a
    client's ledger charges them."""
    spent = Spent() if spent is None else spent
    for _ in range(rounds):
        spent = spent.plus(p.mu1, p.mu2, p.sigma, p.q2, p.steps2)
    return spent


# --- charging ------------------------------------------------------------------------------------------------------
class BudgetExhausted(RuntimeError):
    """The client's next round would spend more than its privacy budget."""


def charge(spent: Spent, p: Plan, dp: DpConfig, caps: Mapping[str, float | None], pid: int, rnd: int) -> Spent:
    """The spending after this round's plan ``p`` (unchanged when non-private); raises :class:`BudgetExhausted` when
    that is over the smallest of the server's ``dp.epsilon`` and ``caps`` (what each cap is -> its value, None: no
    cap)."""
    after = compose(p, 1, spent) if dp.private else spent
    limits = {f"the budget dp.epsilon={dp.epsilon}": dp.epsilon, **caps}
    limits = {what: cap for what, cap in limits.items() if cap is not None}
    if limits:
        what, cap = min(limits.items(), key=lambda item: item[1])
        if after.epsilon(dp.delta) > cap * (1 + 1e-9):
            raise BudgetExhausted(
                f"client {pid}: round {rnd} would bring its epsilon from {spent.epsilon(dp.delta):.4g} to "
                f"{after.epsilon(dp.delta):.4g}, over {what} (delta {dp.delta}): it does not train")
    return after


def reply_metrics(spent: Spent, p: Plan, dp: DpConfig) -> dict[str, float]:
    """What a private reply reports: epsilon spent so far (GDP), phase II alone through opacus' RDP accountant, and
    this round's noise multiplier; nothing when non-private."""
    if not dp.private:
        return {}
    return {DP_EPSILON: spent.epsilon(dp.delta), DP_EPSILON_OPACUS: spent.opacus_epsilon(dp.delta),
            DP_SIGMA: p.sigma}


# --- the largest epsilon reported ----------------------------------------------------------------------------------
REPLY_KEYS = (DP_EPSILON, DP_EPSILON_OPACUS)
"""What a private reply reports that aggregates by its largest value over a round's replies."""
EPSILON_COLUMN = "epsilon"
"""FedDDPM's score column: the largest epsilon a client has reported so far."""
RUN_KEYS = (f"train/{DP_EPSILON}", EPSILON_COLUMN)
"""Where a run's rows (rounds.jsonl) carry it: the diffusion task's aggregated replies, FedDDPM's column."""


def largest_of(values: Iterable[float | None]) -> float | None:
    """The largest of the epsilons reported (None: not reported), None where none is."""
    values = [v for v in values if v is not None]
    return max(values) if values else None


def largest(records: Iterable[Mapping[str, Any]], keys: Sequence[str] = (DP_EPSILON,)) -> float | None:
    """The largest epsilon reported under ``keys`` in ``records``: a round's replies' metric records, or a run's
    rows; None where none reports one."""
    return largest_of(r.get(k) for r in records for k in keys)
