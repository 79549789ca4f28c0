import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedgen.validation import check_reply


def _sent():
    return RecordDict({"arrays": ArrayRecord([np.zeros((2, 3), np.float32), np.zeros(4, np.float32)]),
                       "config": ConfigRecord({"server-round": 1})})


def _reply(arrays=None, n=10, **metrics):
    arrays = arrays if arrays is not None else [np.ones((2, 3), np.float32), np.ones(4, np.float32)]
    return RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": n, **metrics})})


def test_a_good_reply_passes():
    assert check_reply(_sent(), _reply(), "train", max_examples=10) == []


@pytest.mark.parametrize(
    "reply, fragment",
    [
        (_reply([np.full((2, 3), np.nan, np.float32), np.ones(4, np.float32)]), "holds NaN or Inf"),
        (_reply([np.ones((3, 2), np.float32), np.ones(4, np.float32)]), "expected float32[2, 3]"),
        (_reply([np.ones((2, 3), np.float64), np.ones(4, np.float32)]), "is float64[2, 3]"),
        (_reply([np.ones((2, 3), np.float32)]), "missing ['1']"),
        (_reply(n=0), "is not a positive whole number"),
        (_reply(n=2.5), "is not a positive whole number"),
        (_reply(n=11), "exceeds the 10 examples"),
        (_reply(loss=float("inf")), "metric 'metrics.loss' is not finite"),
        (RecordDict({"metrics": MetricRecord({"num-examples": 3})}), "missing record 'arrays'"),
        (RecordDict({"arrays": _reply()["arrays"]}), "missing metric 'num-examples'"),
    ],
)
def test_bad_replies_are_named(reply, fragment):
    problems = check_reply(_sent(), reply, "train", max_examples=10)
    assert any(fragment in p for p in problems), problems


def test_replies_to_messages_without_a_model_need_none():
    sent = RecordDict({"config": ConfigRecord({"server-round": 0})})
    assert check_reply(sent, RecordDict({"metrics": MetricRecord({"partition-id": 1})}), "query") == []
    assert check_reply(sent, RecordDict({"metrics": MetricRecord({"x": float("nan")})}), "query")
