"""State a client keeps between rounds (e.g. FedDyn's gradient correction), on the client's own disk.

Saved per round. The server names the round to continue from ('state-round': the last round whose update from this
client it aggregated; 0: none yet, start afresh), so a rejected or late update, or a round a resumed run repeats,
never moves the client's state. Files older than that round are no longer needed and are deleted. The folder is the
node config's 'state-dir' when the SuperNode sets one, else the one the server names for the run (simulation);
without either, the state lives in the node's context.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message

from clients.common import server_round
from fedgen.checkpoint import save_atomic
from fedgen.wire import CLIENT_STATE_DIR, STATE_ROUND


def state_folder(msg: Message, context: Context) -> Path | None:
    where = context.node_config.get("state-dir") or msg.content["config"].get(CLIENT_STATE_DIR)
    return Path(str(where)) if where else None


def _saved(folder: Path, name: str, pid: int) -> dict[int, Path]:
    """This client's saved files of ``name`` by round."""
    pattern = re.compile(rf"{re.escape(name)}-p{pid}-r(\d+)\.pt")
    found = ((pattern.fullmatch(f.name), f) for f in folder.glob(f"{name}-p{pid}-r*.pt"))
    return {int(m.group(1)): f for m, f in found if m}


def state_round(msg: Message) -> int:
    if STATE_ROUND not in msg.content["config"]:
        raise ValueError(f"message has no config['{STATE_ROUND}']: the server must name the state to continue from")
    return int(msg.content["config"][STATE_ROUND])


def load(msg: Message, context: Context, name: str, pid: int) -> list[torch.Tensor] | None:
    """The state saved in the round the server names (None for round 0: no update of this client aggregated yet)."""
    rnd = state_round(msg)
    if rnd == 0:
        return None
    folder = state_folder(msg, context)
    if folder is None:
        record = context.state.array_records.get(f"{name}-r{rnd}")
        saved = list(record.to_torch_state_dict().values()) if record is not None else None
    else:
        path = _saved(folder, name, pid).get(rnd)
        saved = torch.load(path) if path else None
    if saved is None:
        raise FileNotFoundError(f"client {pid} has no '{name}' state of round {rnd}, which the server aggregated: "
                                f"its state folder ({folder or 'the node context'}) lost it")
    return saved


def save(msg: Message, context: Context, name: str, pid: int, tensors: list[torch.Tensor]) -> None:
    """Keep this round's state beside the one the server named; delete what is older than that."""
    tensors = [t.detach().cpu() for t in tensors]
    rnd, keep_from = server_round(msg), state_round(msg)
    folder = state_folder(msg, context)
    if folder is None:
        context.state[f"{name}-r{rnd}"] = ArrayRecord({str(i): t for i, t in enumerate(tensors)})
        pattern = re.compile(rf"{re.escape(name)}-r(\d+)")
        for key in [k for k in context.state.array_records if (m := pattern.fullmatch(k)) and
                    int(m.group(1)) < keep_from]:
            del context.state[key]
        return
    folder.mkdir(parents=True, exist_ok=True)
    save_atomic(tensors, folder / f"{name}-p{pid}-r{rnd}.pt")
    for r, old in _saved(folder, name, pid).items():
        if r < keep_from:
            old.unlink(missing_ok=True)
