"""Federated evaluation: the clients' evaluate replies, aggregated the same way for every strategy.

Overall loss and accuracy are weighted by each client's test examples; accuracy is also given per client (by the
partition id the reply names, which the Grid has checked against the node's own) and per domain (correct and total
counts summed over the clients, so a domain is weighted by its examples). Nothing else is averaged: a weighted mean
of partition ids or of count lists means nothing.

Training replies' metrics are Flower's weighted mean, except the privacy a client reports having spent: the round's
largest (:func:`fedgen.privacy.accountant.largest`: a mean epsilon would understate what the most exposed client
spent).
"""

from __future__ import annotations

import numpy as np
from flwr.app import MetricRecord, RecordDict

from fedgen.compat.flower import aggregate_metricrecords
from fedgen.privacy import accountant
from fedgen.train import domain_accuracy
from fedgen.wire import (
    DOMAIN_CORRECT,
    DOMAIN_COUNT,
    EVAL_ACC,
    EVAL_LOSS,
    NUM_EXAMPLES,
    PARTITION_ID,
)


def aggregate_evaluations(contents: list[RecordDict], weighted_by_key: str = NUM_EXAMPLES, *,
                          domain_names: list[str]) -> MetricRecord | None:
    """One MetricRecord from evaluate replies: 'acc', 'loss', 'acc-client-<k>', 'acc-domain-<name>', 'num-examples'.

    Its signature is Flower's ``evaluate_metrics_aggr_fn`` (bind ``domain_names`` with functools.partial).
    """
    metrics = [c["metrics"] for c in contents]
    if not metrics:
        return None
    n = np.array([m[weighted_by_key] for m in metrics], dtype=np.float64)
    out = {
        "acc": float(np.average([m[EVAL_ACC] for m in metrics], weights=n)),
        "loss": float(np.average([m[EVAL_LOSS] for m in metrics], weights=n)),
        NUM_EXAMPLES: int(n.sum()),
    }
    out.update({f"acc-client-{int(m[PARTITION_ID])}": float(m[EVAL_ACC]) for m in metrics})
    correct = np.sum([m[DOMAIN_CORRECT] for m in metrics], axis=0)
    total = np.sum([m[DOMAIN_COUNT] for m in metrics], axis=0)
    out.update({f"acc-domain-{d}": acc for d, acc in domain_accuracy(domain_names, correct, total).items()})
    return MetricRecord(out)


def aggregate_train_metrics(contents: list[RecordDict], weighted_by_key: str = NUM_EXAMPLES) -> MetricRecord:
    """Flower's weighted mean of the training replies' metrics, but the largest of
    :data:`fedgen.privacy.accountant.REPLY_KEYS` (its signature is Flower's ``train_metrics_aggr_fn``)."""
    out = aggregate_metricrecords(contents, weighted_by_key)
    records = [m for c in contents for m in c.metric_records.values()]
    for key in accountant.REPLY_KEYS:
        value = accountant.largest(records, (key,))
        if value is not None:
            out[key] = value
    return out
