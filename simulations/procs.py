"""Processes started by fedgen (SuperLinks, SuperNodes, Ray heads): started in their own session, stopped by PID.

Nothing is ever stopped by name: :func:`stop` signals the process groups of the PIDs it is given (each was started
as a session leader, so its group id is its PID) and every live descendant of them, found in /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Start ``cmd`` in a new session, output appended to ``log``; returns its PID."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc.pid


def descendants(pids: set[int]) -> set[int]:
    """Every live descendant of ``pids`` (read from /proc)."""
    parent_of = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent_of[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = set(), set(pids)
    while frontier:
        frontier = {p for p, pp in parent_of.items() if pp in frontier} - found
        found |= frontier
    return found


def listening(port: int) -> set[int]:
    """PIDs of the processes listening on TCP ``port`` (on any address)."""
    import psutil

    return {c.pid for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False




def stop(pids: list[int], grace: float = 10.0) -> list[int]:
    """SIGTERM the groups of ``pids`` and all their descendants, SIGKILL what outlives ``grace``; returns all PIDs."""
    ours = set(pids)
    targets = ours | descendants(ours)
    for pid in ours:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in targets - ours:
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in targets):
        time.sleep(0.2)
    for pid in targets:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace  # SIGKILL is not instantaneous either
    while time.monotonic() < deadline and any(alive(p) for p in targets):
        time.sleep(0.1)
    for pid in ours:  # reap those that are this process's own children
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    return sorted(targets)
