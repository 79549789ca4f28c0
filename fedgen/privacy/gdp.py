"""dp-promise's privacy accounting (Wang et al., USENIX Security 2024; the official ``mechanisms.py``), in mu-GDP.

Training runs in two phases over the diffusion timesteps, split at S:

    phase I  (t in [S, T)): no added noise; the forward process's own noise is the mechanism, for data in [-1, 1]^d:
             mu_1 = q_1 sqrt(n_1 (exp(4 d abar_S / (1 - abar_S)) - 1))
    phase II (t in [0, S)): DP-SGD with noise multiplier sigma:
             mu_2 = q_2 sqrt(n_2 (exp(1 / sigma^2) - 1))
    mu = sqrt(mu_1^2 + mu_2^2)

(q the Poisson sampling rates, n the step counts, abar_S the cumulative alpha at S). Both are the central-limit
composition of subsampled mechanisms, so they compose over rounds by adding mu^2 (what
:mod:`fedgen.privacy.accountant` plans, composes and charges with these formulas). A mu-GDP mechanism is
(epsilon, delta)-DP for every epsilon with delta = Phi(-epsilon/mu + mu/2) - e^epsilon Phi(-epsilon/mu - mu/2)
(Dong, Roth and Su's duality), solved here for epsilon.
"""

from __future__ import annotations

import math

from scipy import optimize
from scipy.stats import norm

MAX_EPSILON = 500.0
"""The official root bracket: larger budgets are not private in any useful sense."""


def delta_of(epsilon: float, mu: float) -> float:
    """The delta at which a mu-GDP mechanism is (epsilon, delta)-DP."""
    if mu <= 0:
        return 0.0
    return float(norm.cdf(-epsilon / mu + mu / 2) - math.exp(epsilon) * norm.cdf(-epsilon / mu - mu / 2))


def epsilon_of(mu: float, delta: float) -> float:
    """The smallest epsilon at which a mu-GDP mechanism is (epsilon, delta)-DP (0 for mu = 0)."""
    if mu <= 0 or delta_of(0.0, mu) <= delta:
        return 0.0
    if delta_of(MAX_EPSILON, mu) > delta:
        return math.inf
    return float(optimize.brentq(lambda e: delta_of(e, mu) - delta, 0.0, MAX_EPSILON))


def mu_of(epsilon: float, delta: float) -> float:
    """The largest mu whose mechanism is (epsilon, delta)-DP (epsilon grows with mu)."""
    if epsilon <= 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    return float(optimize.brentq(lambda m: delta_of(epsilon, m) - delta, 1e-6, 100.0))


def phase1_mu(q: float, steps: int, dim: int, abar_s: float) -> float:
    """Phase I's charge: the forward noise at t >= S on data in [-1, 1]^dim (infinite where exp overflows a float:
    the noise left at S covers nothing)."""
    if steps == 0:
        return 0.0
    try:
        return q * math.sqrt(steps * math.expm1(4 * dim * abar_s / (1 - abar_s)))
    except OverflowError:
        return math.inf


def phase2_mu(q: float, steps: int, sigma: float | None) -> float:
    """Phase II's charge: DP-SGD with noise multiplier ``sigma`` (None: no noise, no privacy)."""
    if steps == 0:
        return 0.0
    if sigma is None:
        return math.inf
    return q * math.sqrt(steps * math.expm1(1 / sigma**2))


def phase1_over(mu1: float, epsilon: float | None, delta: float) -> ValueError:
    """The refusal of a phase I whose charge ``mu1`` alone exceeds the budget (None: an infinite charge, over any)."""
    budget = "any budget" if epsilon is None else f"the budget {epsilon}"
    return ValueError(f"phase I alone spends epsilon {epsilon_of(mu1, delta):.3g} (mu {mu1:.3g}), over {budget} at "
                      f"delta {delta}: raise dp.split_step or train phase I for fewer epochs")


def sigma_for(epsilon: float, delta: float, mu1: float, q2: float, steps2: int) -> float:
    """The noise multiplier whose phase II, beside a phase I of ``mu1``, spends exactly (epsilon, delta)."""
    mu = mu_of(epsilon, delta)
    if mu1 >= mu:
        raise phase1_over(mu1, epsilon, delta)
    mu2 = math.sqrt(mu**2 - mu1**2)
    return 1 / math.sqrt(math.log1p(mu2**2 / (q2**2 * steps2)))
