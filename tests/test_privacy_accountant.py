"""The privacy accountant (fedgen.privacy.accountant): a client's ledger reports what composing its rounds gives,
a charge over the budget or the node's cap is refused, and the largest epsilon reported over replies and rows."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, MetricRecord, RecordDict

from clients import dp_ledger
from fedgen.config import DpConfig
from fedgen.data import ImageSet
from fedgen.fedeval import aggregate_train_metrics
from fedgen.privacy import accountant
from fedgen.wire import DP_EPSILON, DP_EPSILON_OPACUS, DP_SIGMA, NUM_EXAMPLES

DP = DpConfig(epsilon=4.0, split_step=950, batch_size1=8, epochs1=1, batch_size2=64)
ROUNDS, N, DIM, ABAR = 5, 300, 16, 1e-4


def _client(node_config: dict) -> tuple[SimpleNamespace, Context, ImageSet]:
    """A client's message (its content: the ledger reads the config), context and data."""
    msg = SimpleNamespace(content=RecordDict({"config": ConfigRecord({})}))
    context = Context(run_id=0, node_id=1, node_config=node_config, state=RecordDict(), run_config={})
    data = ImageSet(np.zeros((N, 4, 4, 3), dtype=np.uint8), np.zeros(N, dtype=np.int64), np.zeros(N, dtype=np.int64))
    return msg, context, data


@pytest.mark.parametrize("on_disk", [True, False])
def test_composing_the_rounds_gives_what_the_ledger_reports_after_charging_each(tmp_path, monkeypatch, on_disk):
    monkeypatch.delenv(dp_ledger.NODE_CAP_ENV, raising=False)
    plan = accountant.plan(N, DP, ROUNDS, DIM, ABAR)
    msg, context, data = _client({"state-dir": str(tmp_path)} if on_disk else {})
    for rnd in range(1, ROUNDS + 1):
        after = dp_ledger.charge(msg, context, data, 0, rnd, DP, plan)
        reported = accountant.reply_metrics(after, plan, DP)
        composed = accountant.compose(plan, rnd)
        assert after == composed  # the same operations in the same order: bit for bit
        assert reported[DP_EPSILON] == composed.epsilon(DP.delta)
        assert reported[DP_EPSILON_OPACUS] == composed.opacus_epsilon(DP.delta) and reported[DP_SIGMA] == plan.sigma
    assert reported[DP_EPSILON] == pytest.approx(DP.epsilon, rel=1e-6)  # sigma calibrated for the run's rounds
    with pytest.raises(dp_ledger.BudgetExhausted, match=r"client 0: round 6 .* over the budget dp.epsilon=4.0"):
        dp_ledger.charge(msg, context, data, 0, ROUNDS + 1, DP, plan)
    assert dp_ledger.charge(msg, context, data, 0, ROUNDS + 1, DpConfig(), plan) == composed  # non-private: free


def test_the_smallest_cap_refuses_and_a_refusal_charges_nothing():
    plan = accountant.plan(N, DP, ROUNDS, DIM, ABAR)
    one = accountant.compose(plan, 1)
    assert accountant.charge(accountant.Spent(), plan, DP, {"no cap": None}, 2, 1) == one
    with pytest.raises(accountant.BudgetExhausted, match=r"client 2: round 2 .* over the cap 'low'"):
        accountant.charge(one, plan, DP, {"the cap 'low'": one.epsilon(DP.delta) * 1.01}, 2, 2)
    assert accountant.compose(plan, 1, one) == accountant.compose(plan, 2)


def test_a_phase_one_past_the_budget_is_refused_naming_the_client():
    accountant.check_clients([N, N], DP, ROUNDS, DIM, 0.01)
    with pytest.raises(ValueError, match=r"client 1: phase I alone spends epsilon"):
        accountant.check_clients([N, 2], DP, ROUNDS, DIM, 0.01)  # 2 examples: q1 = 1
    assert accountant.phase1_unbounded(DIM, ABAR, DP) is None
    assert "spends epsilon inf" in str(accountant.phase1_unbounded(3 * 32**2, 0.1, DP))


def test_the_largest_epsilon_reported_over_replies_and_rows():
    replies = [RecordDict({"metrics": MetricRecord({NUM_EXAMPLES: n, DP_EPSILON: e, DP_EPSILON_OPACUS: o})})
               for n, e, o in ((10, 1.5, 2.0), (30, 3.25, 1.0), (20, 0.5, 4.0))]
    assert accountant.largest([r["metrics"] for r in replies]) == 3.25
    aggregated = aggregate_train_metrics(replies)
    assert aggregated[DP_EPSILON] == 3.25 and aggregated[DP_EPSILON_OPACUS] == 4.0  # not the weighted means
    assert DP_EPSILON not in aggregate_train_metrics([RecordDict({"metrics": MetricRecord({NUM_EXAMPLES: 1})})])
    rows = [{"round": 0, "train/dp-epsilon": None}, {"round": 1, "train/dp-epsilon": 2.0},
            {"round": 2, accountant.EPSILON_COLUMN: 2.5}, {"round": 3, "train/dp-epsilon": math.inf}]
    assert accountant.largest(rows[:3], accountant.RUN_KEYS) == 2.5
    assert accountant.largest(rows, accountant.RUN_KEYS) == math.inf
    assert accountant.largest(rows[:1], accountant.RUN_KEYS) is None and accountant.largest([], ()) is None
    assert accountant.largest_of((0.0, None)) == 0.0 and accountant.largest_of((1.0, 3.0)) == 3.0
