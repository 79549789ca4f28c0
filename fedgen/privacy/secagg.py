"""Exact secure summation of integer vectors with Flower's SecAgg+ (Flower's legacy ``SecAggPlusWorkflow`` on the
server, ``secaggplus_mod`` on the clients: :mod:`clients.secure`).

SecAgg+ returns a clipped, quantised, example-weighted mean. With every client's weight 1 (``max_weight=1``,
``num_examples=1``), a clipping range C at least every value, a quantisation range of 2C (one step per integer, so
nothing is rounded) and the 32-bit modulus, the mean times the number of clients summed is their exact sum, as long
as n * 2C < 2**32. The server only ever holds masked vectors and the sum; a client that drops out after the key
exchange is left out of the sum (its masks are reconstructed from its neighbours' shares).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.serverapp import Grid

from fedgen.compat.flower import (
    MAIN_CONFIGS_RECORD,
    MAIN_PARAMS_RECORD,
    FitIns,
    GridClientProxy,
    LegacyContext,
    LegacyFedAvg,
    SecAggPlusWorkflow,
    WorkflowKey,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)

MODULUS = 2 ** 32


class SecureAggregationError(RuntimeError):
    """SecAgg+ stopped before the sum was known (too few clients answered a stage)."""


@dataclass(frozen=True)
class SecureSum:
    total: list[np.ndarray]
    """The element-wise sum of the summed clients' vectors (int64)."""
    clients: int
    """How many clients' vectors it sums."""


def summed_keys(arrays: dict[str, np.ndarray]) -> list[str]:
    """The arrays of a model that SecAgg+ averages: the floating-point ones (an integer buffer, e.g. BatchNorm's
    step count, keeps the server's value)."""
    return [k for k, a in arrays.items() if np.issubdtype(a.dtype, np.floating)]


def max_clients(bound: int) -> int:
    """The most clients whose vectors in [0, bound) SecAgg+ sums exactly."""
    return (MODULUS - 1) // (2 * max(bound - 1, 1))


def _run(grid: Grid, node_ids: Sequence[int], config: ConfigRecord, parameters: list[np.ndarray],
         workflow: SecAggPlusWorkflow, server_round: int) -> tuple[list[np.ndarray], int]:
    """One run of SecAgg+ over ``node_ids``, sending them ``parameters`` and ``config`` (a legacy FitIns): the
    unmasked aggregate (the weighted mean SecAgg+ computes) and how many clients it covers."""
    if len(node_ids) < 2:
        raise SecureAggregationError(f"round {server_round}: secure aggregation needs at least 2 clients, got "
                                     f"{len(node_ids)}")
    captured: dict = {}
    proxies = [GridClientProxy(n, grid, 0) for n in node_ids]
    ins = FitIns(ndarrays_to_parameters(parameters), dict(config))

    class Collect(LegacyFedAvg):
        """The legacy strategy SecAgg+ drives: asks the given nodes, keeps the unmasked aggregate."""

        def configure_fit(self, server_round, parameters, client_manager):
            return [(p, ins) for p in proxies]

        def aggregate_fit(self, server_round, results, failures):
            if results:
                captured["mean"] = parameters_to_ndarrays(results[0][1].parameters)
                captured["clients"] = len(results)
            return None, {}

    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            strategy=Collect())
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    workflow(grid, context)
    if "mean" not in captured:
        raise SecureAggregationError(
            f"round {server_round}: SecAgg+ halted before unmasking: fewer clients than its reconstruction threshold "
            f"answered a stage ({len(node_ids)} asked; see the failures logged above)")
    return captured["mean"], captured["clients"]


def secure_sum(grid: Grid, node_ids: Sequence[int], config: ConfigRecord, bound: int, num_shares: float,
               reconstruction_threshold: float, timeout: float | None, server_round: int = 0) -> SecureSum:
    """Sum the vectors of ``node_ids`` (each computes its own from ``config``, every value in [0, bound)) under
    SecAgg+, exactly."""
    if len(node_ids) > max_clients(bound):
        raise SecureAggregationError(f"{len(node_ids)} clients' vectors in [0, {bound}) overflow SecAgg+'s 32-bit "
                                     f"sum: at most {max_clients(bound)} clients")
    clip = bound - 1
    workflow = SecAggPlusWorkflow(num_shares, reconstruction_threshold, max_weight=1.0, clipping_range=float(clip),
                                  quantization_range=2 * clip, modulus_range=MODULUS, timeout=timeout)
    mean, n = _run(grid, node_ids, config, [], workflow, server_round)
    return SecureSum([np.rint(m * n).astype(np.int64) for m in mean], n)


def secure_mean(grid: Grid, node_ids: Sequence[int], config: ConfigRecord, arrays: list[np.ndarray],
                max_weight: int, clipping_range: float, num_shares: float, reconstruction_threshold: float,
                timeout: float | None, server_round: int) -> tuple[list[np.ndarray], int]:
    """FedAvg's example-weighted mean of the arrays the clients send back under SecAgg+ (those of
    :func:`summed_keys` of the model ``arrays`` they are sent), in float64, and how many clients it covers. Flower's
    quantisation: every value clipped to +-clipping_range, 2**22 levels; weights num_examples / max_weight, so
    ``max_weight`` must be at least every client's training-set size."""
    workflow = SecAggPlusWorkflow(num_shares, reconstruction_threshold, max_weight=float(max_weight),
                                  clipping_range=clipping_range, timeout=timeout)
    return _run(grid, node_ids, config, arrays, workflow, server_round)
