"""Validation of client replies, shared by every strategy: a bad reply never reaches the global model.

A reply is rejected, with a reason, when it
- carries non-numeric arrays, or NaN / Inf in any array or metric;
- answers a message that carried a model (an ArrayRecord) without returning one of the same keys, shapes and dtypes
  (for train messages), or returns one that differs from it (a 'context' record, used and not trained, stays);
- reports an absurd 'num-examples' (not a positive whole number, or more than the client is known to hold);
- holds other than exactly one MetricRecord, or more than one ArrayRecord (what Flower's aggregation accepts);
- differs in record keys from the other replies to messages of its type that carried the same model (Flower's
  aggregation would refuse the whole set: :func:`inconsistent_replies` finds the odd ones out).
"""

from __future__ import annotations

import math
from collections.abc import Hashable

import numpy as np
from flwr.app import RecordDict

from fedgen.wire import CONTEXT_ARRAYS, NUM_EXAMPLES


def _finite(value) -> bool:
    values = value if isinstance(value, list) else [value]
    return all(math.isfinite(float(v)) for v in values)


def check_reply(
    sent: RecordDict, reply: RecordDict, message_type: str, max_examples: int | None = None
) -> list[str]:
    """Problems with ``reply`` to a message that carried ``sent``; an empty list means it is acceptable."""
    problems: list[str] = []
    if len(reply.metric_records) != 1:
        problems.append(f"{len(reply.metric_records)} MetricRecords {sorted(reply.metric_records)}, expected one")
    if len(reply.array_records) > 1:
        problems.append(f"{len(reply.array_records)} ArrayRecords {sorted(reply.array_records)}, expected at most one")
    for key, record in reply.array_records.items():
        for name, arr in record.items():
            try:
                a = arr.numpy()
            except Exception as err:  # noqa: BLE001 - undecodable payloads come in many forms
                problems.append(f"array '{key}.{name}' cannot be decoded: {err}")
                continue
            if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
                problems.append(f"array '{key}.{name}' has non-numeric dtype {a.dtype}")
            elif np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                problems.append(f"array '{key}.{name}' holds NaN or Inf")
    for key, ref in sent.array_records.items():
        if key == CONTEXT_ARRAYS:
            continue  # what the client used, not what it trained: it stays there
        got = reply.array_records.get(key)
        if got is None:
            if message_type.split(".")[0] == "train":
                problems.append(f"missing record '{key}' (the model sent for training must come back)")
            continue
        missing, extra = ref.keys() - got.keys(), got.keys() - ref.keys()
        if missing or extra:
            problems.append(f"record '{key}': missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}")
        for name in ref.keys() & got.keys():
            r, g = ref[name], got[name]
            if tuple(r.shape) != tuple(g.shape) or r.dtype != g.dtype:
                problems.append(f"array '{key}.{name}' is {g.dtype}{list(g.shape)}, expected {r.dtype}{list(r.shape)}")
    for key, record in reply.metric_records.items():
        for name, value in record.items():
            if not _finite(value):
                problems.append(f"metric '{key}.{name}' is not finite")
        if NUM_EXAMPLES in record:
            n = record[NUM_EXAMPLES]
            if isinstance(n, list) or not _finite(n) or float(n) != int(n) or int(n) < 1:
                problems.append(f"metric '{key}.{NUM_EXAMPLES}'={n!r} is not a positive whole number")
            elif max_examples is not None and int(n) > max_examples:
                problems.append(
                    f"metric '{key}.{NUM_EXAMPLES}'={n} exceeds the {max_examples} examples the client holds"
                )
    weighted = message_type == "evaluate" or (sent.array_records and message_type.split(".")[0] == "train")
    if weighted and not any(NUM_EXAMPLES in r for r in reply.metric_records.values()):
        problems.append(f"missing metric '{NUM_EXAMPLES}' (needed to weight the reply)")
    return problems


def _keys(reply: RecordDict) -> tuple:
    return tuple((name, tuple(sorted(rec.keys()))) for name, rec in sorted({**reply.array_records,
                                                                             **reply.metric_records}.items()))


def inconsistent_replies(replies: list[RecordDict], kinds: list[Hashable]) -> dict[int, str]:
    """Index -> reason, for each reply whose record names and keys differ from those most replies of its kind share
    (ties: the earliest reply's); a kind is a message type, or finer (the type and the model the message carried).
    Flower's aggregation refuses a set of replies unless all agree."""
    odd: dict[int, str] = {}
    for kind in set(kinds):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        shapes = [_keys(replies[i]) for i in idx]
        common = max(shapes, key=lambda s: (shapes.count(s), -shapes.index(s)))
        want = {name: set(keys) for name, keys in common}
        for i, shape in zip(idx, shapes, strict=True):
            if shape == common:
                continue
            got = {name: set(keys) for name, keys in shape}
            diffs = [f"record '{n}': extra {sorted(got.get(n, set()) - want.get(n, set()))[:5]}, "
                     f"missing {sorted(want.get(n, set()) - got.get(n, set()))[:5]}"
                     for n in sorted(want.keys() | got.keys()) if got.get(n) != want.get(n)]
            odd[i] = "its record keys differ from the other replies' (" + "; ".join(diffs) + ")"
    return odd
