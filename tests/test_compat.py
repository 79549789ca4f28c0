"""The private and semi-private names fedgen uses of Flower and opacus: each still exists and means what
fedgen.compat assumes (a failure names the symbol an upgrade changed), and nothing outside fedgen/compat reaches one.
"""

import ast
import inspect
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam

from fedgen.compat import flower, opacus

ROOT = Path(__file__).resolve().parents[1]


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


class _TwoNodeGrid:
    def get_node_ids(self):
        return [7, 8]

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return (content, message_type, dst_node_id)


class _SteppingW(flower.FedOptSubset, FedAdam):
    """FedAdam stepping 'w' only, as fedgen's FedAdam steps the parameters and averages the rest."""

    aside: dict = {}

    def stepped(self, key: str) -> bool:
        return key == "w"

    def set_aside(self, arrays: dict) -> None:
        self.aside = arrays


def _fedopt_round():
    """A FedAdam round through the adapter alone: its reference (current_arrays), moments (m_t, v_t), the shared
    step (_compute_deltat_and_mt) and the reply check (_check_and_log_replies) Flower's aggregate_train runs."""
    flower.act_as_server(1, 0)
    s = _SteppingW()
    messages = list(s.configure_train(1, ArrayRecord({"w": torch.ones(2), "stat": torch.zeros(2)}), ConfigRecord(),
                                      _TwoNodeGrid()))
    s.restrict_reference()
    assert s.moments() == {"m_t": None, "v_t": None}
    replies = []
    for i, msg in enumerate(messages):
        flower.set_message_id(msg, f"m{i}")
        trained = ArrayRecord({"w": torch.full((2,), 2.0), "stat": torch.full((2,), 5.0)})
        replies.append(Message(RecordDict({"arrays": trained, "metrics": MetricRecord({"num-examples": 1})}),
                               reply_to=msg))
    assert flower.check_and_log_replies(s, replies, is_train=True, validate=True) == (replies, [])
    arrays, _ = s.aggregate_train(1, replies)
    assert set(arrays) == {"w"} and set(s.aside) == {"stat"} and set(s.moments()["m_t"]) == {"w"}
    s.load_moments({"m_t": None, "v_t": None})
    assert s.moments() == {"m_t": None, "v_t": None}


def _opacus_hooks_removed():
    model = torch.nn.Linear(2, 1)
    opacus.remove_hooks(opacus.GradSampleModule(model))
    model(torch.ones(3, 2)).sum().backward()
    assert model.weight.grad is not None and not hasattr(model.weight, "grad_sample")


def _rdp_history():
    assert opacus.rdp_accountant([(1.0, 0.1, 100)]).get_epsilon(1e-5) > \
        opacus.rdp_accountant([(1.0, 0.1, 10)]).get_epsilon(1e-5) > 0


def _task_identity():
    flower.act_as_server(5, 0)
    msg = Message(RecordDict(), dst_node_id=3, message_type="train")
    assert msg.metadata.run_id == 5 and msg.metadata.src_node_id == 0
    flower.set_message_id(msg, "abc")
    assert msg.metadata.message_id == "abc"
    assert flower.copy_over_the_wire(msg).metadata.message_id == "abc"


CHECKS = {
    "flwr FedAvg._check_and_log_replies, FedOpt current_arrays, m_t, v_t, _compute_deltat_and_mt": _fedopt_round,
    "flwr strategy_utils.sample_nodes(grid, min_available_nodes, sample_size)":
        lambda: _params(flower.sample_nodes) == ["grid", "min_available_nodes", "sample_size"],
    "flwr strategy_utils.aggregate_metricrecords(records, weighting_metric_name)":
        lambda: _params(flower.aggregate_metricrecords) == ["records", "weighting_metric_name"],
    "flwr GridClientProxy(node_id, grid, run_id)":
        lambda: _params(flower.GridClientProxy.__init__)[:4] == ["self", "node_id", "grid", "run_id"],
    "flwr LegacyContext(context, config, strategy, client_manager)":
        lambda: {"context", "strategy"} <= set(_params(flower.LegacyContext.__init__)),
    "flwr SecAggPlusWorkflow(num_shares, reconstruction_threshold, ...)": lambda: {
        "num_shares", "reconstruction_threshold", "max_weight", "clipping_range", "quantization_range",
        "modulus_range", "timeout"} <= set(_params(flower.SecAggPlusWorkflow.__init__)),
    "flwr workflow constants MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key.CURRENT_ROUND":
        lambda: all(isinstance(v, str) and v for v in (flower.MAIN_CONFIGS_RECORD, flower.MAIN_PARAMS_RECORD,
                                                       flower.WorkflowKey.CURRENT_ROUND)),
    "flwr secaggplus_constants RECORD_KEY_CONFIGS, Key.STAGE":
        lambda: isinstance(flower.RECORD_KEY_CONFIGS, str) and isinstance(flower.SecAggKey.STAGE, str),
    "flwr secaggplus_mod(msg, ctxt, call_next)": lambda: len(_params(flower.secaggplus_mod)) == 3,
    "flwr compat recorddict_to_fitins / fitres_to_recorddict(keep_input)":
        lambda: {"keep_input"} <= set(_params(flower.recorddict_compat.recorddict_to_fitins))
        and {"keep_input"} <= set(_params(flower.recorddict_compat.fitres_to_recorddict)),
    "flwr TaskIdentity, Metadata._message_id, serde": _task_identity,
    "opacus GradSampleModule._close()": _opacus_hooks_removed,
    "opacus RDPAccountant.history": _rdp_history,
}


@pytest.mark.parametrize("symbol", list(CHECKS))
def test_each_private_name_still_means_what_compat_assumes(symbol):
    try:
        result = CHECKS[symbol]()
    except Exception as err:  # noqa: BLE001 - any failure names the symbol
        pytest.fail(f"{symbol}: {type(err).__name__}: {err} (an upgrade changed it: fix fedgen/compat)")
    assert result is not False, f"{symbol}: its signature or meaning changed (an upgrade changed it: fix fedgen/compat)"


PUBLIC = {"flwr.app", "flwr.serverapp", "flwr.serverapp.strategy", "flwr.clientapp", "flwr.simulation",
          "opacus", "opacus.validators", "flwr_datasets.partitioner"}
"""What code outside fedgen/compat may import of Flower, flwr-datasets and opacus."""
PRIVATE_ATTRIBUTES = {"_check_and_log_replies", "_compute_deltat_and_mt", "current_arrays", "m_t", "v_t", "_close",
                      "_module", "history", "_message_id", "TaskIdentity"}
"""The private attributes fedgen.compat wraps: nobody else reaches them."""


def test_nothing_outside_compat_imports_or_reaches_a_private_name():
    found = []
    for path in sorted(p for package in ("fedgen", "strategies", "clients", "simulations", "tests")
                       for p in (ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[:2] == ("fedgen", "compat"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found += [f"{rel}:{node.lineno} imports {m}" for m in modules
                          if m.split(".")[0] in ("flwr", "opacus", "flwr_datasets") and m not in PUBLIC]
            elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
                found.append(f"{rel}:{node.lineno} reaches .{node.attr}")
    assert found == [], "private names outside fedgen/compat:\n" + "\n".join(found)

