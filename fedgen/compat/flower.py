"""Flower's private and semi-private names, behind one module (tested against flwr 1.42).

Public and used directly elsewhere: ``flwr.app``, ``flwr.serverapp`` (``Grid``, ``ServerApp``),
``flwr.serverapp.strategy`` (the strategy classes), ``flwr.clientapp`` and ``flwr.simulation``. Everything else of
Flower's that fedgen needs is imported or reached here; ``tests/test_compat.py`` exercises each through this module.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message

# SecAgg+ exists only as the legacy workflow: its strategy, client proxy, context, record keys and the legacy
# FitIns/FitRes conversion
from flwr.client.mod import secaggplus_mod
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Status,
    bytes_to_ndarray,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.common.secure_aggregation.secaggplus_constants import Key as SecAggKey
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.compat.common import recorddict_compat
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords, sample_nodes
from flwr.supercore.task_identity import TaskIdentity

__all__ = [
    "RECORD_KEY_CONFIGS", "MAIN_CONFIGS_RECORD", "MAIN_PARAMS_RECORD", "Code", "FitIns", "FitRes", "FedOptSubset",
    "GridClientProxy", "LegacyContext", "LegacyFedAvg", "SecAggKey", "SecAggPlusWorkflow", "Status", "WorkflowKey",
    "aggregate_metricrecords", "bytes_to_ndarray", "check_and_log_replies", "ndarrays_to_parameters",
    "parameters_to_ndarrays", "recorddict_compat", "sample", "sample_nodes", "sample_size", "secaggplus_mod",
    "copy_over_the_wire",
    "set_message_id", "act_as_server",
]


def check_and_log_replies(strategy, replies: Iterable[Message], is_train: bool,
                          validate: bool = True) -> tuple[list[Message], list[Message]]:
    """Flower's reply check of its Message-API strategies (``FedAvg._check_and_log_replies``): (valid, error)
    replies, the errors logged; with ``validate``, the arrays and metrics records are checked too."""
    return strategy._check_and_log_replies(replies, is_train=is_train, validate=validate)


def sample_size(connected: int, fraction: float, minimum: int) -> int:
    """How many nodes Flower's FedAvg family samples: max(int(connected * fraction), minimum)."""
    return max(int(connected * fraction), minimum)


def sample(grid, fraction: float, minimum: int) -> list[int]:
    """Node ids sampled as Flower's FedAvg family samples them (waiting for ``minimum`` to be connected), for a
    strategy that samples on its own."""
    nodes, _ = sample_nodes(grid, minimum, sample_size(len(list(grid.get_node_ids())), fraction, minimum))
    return nodes


class FedOptSubset:
    """A mixin for Flower's FedAdam / FedYogi / FedAdagrad (``FedOpt``): the adaptive step moves only the arrays
    :meth:`stepped` keeps; the others are returned by :meth:`set_aside` for the subclass to average itself.

    It reaches FedOpt's ``current_arrays`` (the reference the step is taken from), ``m_t`` / ``v_t`` (the server's
    moments) and ``_compute_deltat_and_mt`` (the shared stage of the step)."""

    def stepped(self, key: str) -> bool:  # pragma: no cover - overridden
        return True

    def set_aside(self, arrays: dict) -> None:  # pragma: no cover - overridden
        pass

    def restrict_reference(self) -> None:
        """Keep only the stepped arrays in the reference the next step is taken from."""
        self.current_arrays = {k: v for k, v in self.current_arrays.items() if self.stepped(k)}

    def moments(self) -> dict:
        return {"m_t": self.m_t, "v_t": self.v_t}

    def load_moments(self, state: dict) -> None:
        self.m_t, self.v_t = state["m_t"], state["v_t"]

    def _compute_deltat_and_mt(self, aggregated: ArrayRecord):
        self.set_aside({k: a for k, a in aggregated.items() if not self.stepped(k)})
        return super()._compute_deltat_and_mt(ArrayRecord({k: a for k, a in aggregated.items() if self.stepped(k)}))


def copy_over_the_wire(msg: Message) -> Message:
    """The message as a receiver gets it: serialised and parsed (Flower's protobuf serde)."""
    return message_from_proto(message_to_proto(msg))


def set_message_id(msg: Message, message_id: str) -> None:
    """Set the id the SuperLink would give a message it stores (Flower's ``Metadata`` keeps it read-only)."""
    msg.metadata.__dict__["_message_id"] = message_id


def act_as_server(run_id: int, node_id: int) -> None:
    """Make this process a ServerApp task of ``run_id`` on ``node_id``: Flower's ``Message`` constructor reads the
    sender's identity from its private ``TaskIdentity`` (an in-process Grid for tests needs it set)."""
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = node_id
