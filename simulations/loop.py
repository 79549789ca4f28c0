"""The round loop: Flower's Strategy.start, with a first round to resume from and a hook after each round.

Strategies keep Flower's signatures (configure_train / aggregate_train / configure_evaluate / aggregate_evaluate);
this loop calls them in Flower's order. It adds what Strategy.start lacks: resuming at a given round, a check that
enough clients sent valid updates, and a callback after each round (evaluation, results, checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedgen.wire import NUM_EXAMPLES


def keep_dtypes(arrays: ArrayRecord, like: ArrayRecord) -> ArrayRecord:
    """Give aggregated arrays the dtypes of the model they came from.

    Flower's weighted averaging returns float64 for integer buffers (BatchNorm's num_batches_tracked); sent on as
    they are, every client's reply would differ from the model it was sent.
    """
    if all(arrays[k].dtype == like[k].dtype for k in arrays.keys() & like.keys()):
        return arrays
    ref = like.to_torch_state_dict()
    state = arrays.to_torch_state_dict()
    return ArrayRecord({k: v.to(ref[k].dtype) if k in ref else v for k, v in state.items()})


class RoundFailed(RuntimeError):
    """Too few clients sent a valid update for a round to count."""


def run_rounds(
    strategy: Strategy,
    grid: Grid,
    arrays: ArrayRecord,
    first_round: int,
    last_round: int,
    train_config: ConfigRecord,
    evaluate_config: ConfigRecord,
    timeout: float,
    min_train_replies: int,
    after_round: Callable[[int, ArrayRecord, dict], None],
    failures: Callable[[int], list[str]] = lambda rnd: [],
) -> ArrayRecord:
    for rnd in range(first_round, last_round + 1):
        messages = list(strategy.configure_train(rnd, arrays, train_config, grid))
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        if messages and len(replies) < min(min_train_replies, len(messages)):
            raise RoundFailed(
                f"round {rnd}: only {len(replies)} of {len(messages)} sampled clients sent a valid update, fewer than "
                f"strategy.min_train_clients={min_train_replies}. Failures: " + "; ".join(failures(rnd))
            )
        new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
        if new_arrays is not None:
            arrays = keep_dtypes(new_arrays, like=arrays)
        eval_messages = list(strategy.configure_evaluate(rnd, arrays, evaluate_config, grid))
        eval_metrics = strategy.aggregate_evaluate(rnd, grid.send_and_receive(eval_messages, timeout=timeout))
        extras = {}
        for prefix, metrics in (("train", train_metrics), ("fedeval", eval_metrics)):
            if isinstance(metrics, MetricRecord):
                extras.update({f"{prefix}/{k}": v for k, v in metrics.items() if k != NUM_EXAMPLES})
        after_round(rnd, arrays, extras)
    return arrays
