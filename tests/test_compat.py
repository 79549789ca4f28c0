"""The private and semi-private names fedgen uses of Flower and opacus: each still exists and means what
fedgen.compat assumes (a failure names the symbol an upgrade changed), and nothing outside fedgen/compat reaches one.
"""

import ast
import inspect
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg

from fedgen.compat import flower, opacus

ROOT = Path(__file__).resolve().parents[1]


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _fedopt_attributes():
    flower.act_as_server(1, 0)
    s = FedAdam()
    s.configure_train(1, ArrayRecord({"w": torch.ones(2)}), ConfigRecord(), _TwoNodeGrid())
    assert set(s.current_arrays) == {"w"} and s.m_t is None and s.v_t is None


class _TwoNodeGrid:
    def get_node_ids(self):
        return [7, 8]

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return (content, message_type, dst_node_id)


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
    "flwr FedAvg._check_and_log_replies(replies, is_train, validate)":
        lambda: _params(FedAvg._check_and_log_replies) == ["self", "replies", "is_train", "validate"],
    "flwr FedOpt._compute_deltat_and_mt(aggregated_arrayrecord)":
        lambda: _params(FedAdam._compute_deltat_and_mt) == ["self", "aggregated_arrayrecord"],
    "flwr FedOpt current_arrays, m_t, v_t": _fedopt_attributes,
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
    "opacus GradSampleModule._close()": lambda: _params(opacus.GradSampleModule._close) == ["self"],
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
    for path in sorted(ROOT.glob("*/**/*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0].startswith(".") or rel.parts[:2] == ("fedgen", "compat") or path == Path(__file__):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found += [f"{rel}:{node.lineno} imports {m}" for m in modules
                          if m.split(".")[0] in ("flwr", "opacus", "flwr_datasets") and m not in PUBLIC]
            elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
                found.append(f"{rel}:{node.lineno} reaches .{node.attr}")
    assert found == [], "private names outside fedgen/compat:\n" + "\n".join(found)

