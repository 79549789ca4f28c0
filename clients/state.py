"""State a client keeps between rounds (e.g. FedDyn's gradient correction), on the client's own disk.

Saved per round, so that a resumed run finds exactly the state the client had after the last completed round:
loading for round r takes the newest file of a round before r (a file of round r itself may be left by an
interrupted round r). The folder is the node config's 'state-dir' when the SuperNode sets one, else the one the
server names for the run (simulation). Without either, the state lives in the node's context only.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message

from clients.common import server_round
from fedgen.wire import CLIENT_STATE_DIR

KEEP = 2


def _folder(msg: Message, context: Context) -> Path | None:
    where = context.node_config.get("state-dir") or msg.content["config"].get(CLIENT_STATE_DIR)
    return Path(str(where)) if where else None


def _saved(folder: Path, name: str, pid: int) -> list[tuple[int, Path]]:
    """This client's saved files of ``name``, as (round, path), oldest first."""
    pattern = re.compile(rf"{re.escape(name)}-p{pid}-r(\d+)\.pt")
    found = ((pattern.fullmatch(f.name), f) for f in folder.glob(f"{name}-p{pid}-r*.pt"))
    return sorted((int(m.group(1)), f) for m, f in found if m)


def load(msg: Message, context: Context, name: str, pid: int) -> list[torch.Tensor] | None:
    folder = _folder(msg, context)
    if folder is None:
        record = context.state.array_records.get(name)
        return list(record.to_torch_state_dict().values()) if record is not None else None
    rnd = server_round(msg)
    earlier = [f for r, f in _saved(folder, name, pid) if r < rnd]
    return torch.load(earlier[-1]) if earlier else None


def save(msg: Message, context: Context, name: str, pid: int, tensors: list[torch.Tensor]) -> None:
    tensors = [t.detach().cpu() for t in tensors]
    folder = _folder(msg, context)
    if folder is None:
        context.state[name] = ArrayRecord({str(i): t for i, t in enumerate(tensors)})
        return
    folder.mkdir(parents=True, exist_ok=True)
    rnd = server_round(msg)
    tmp = folder / f"{name}-p{pid}-r{rnd}.tmp"
    torch.save(tensors, tmp)
    tmp.replace(folder / f"{name}-p{pid}-r{rnd}.pt")
    for _, old in _saved(folder, name, pid)[:-KEEP]:
        old.unlink(missing_ok=True)
