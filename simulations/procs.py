"""Processes started by fedgen (SuperLinks, SuperNodes, Ray heads): started in their own session, stopped by PID.

Nothing is ever stopped by name: :func:`stop` signals the process groups of the PIDs it is given (each was started
as a session leader, so its group id is its PID) and every live descendant of them (psutil), and says which it
could not stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Start ``cmd`` in a new session, output appended to ``log``; returns its PID."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc.pid


def descendants(pids: set[int]) -> set[int]:
    """Every live descendant of ``pids``."""
    found: set[int] = set()
    for pid in pids:
        try:
            found |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
        except psutil.Error:
            continue
    return found


def listening(port: int) -> set[int]:
    """PIDs of the processes listening on TCP ``port`` (on any address)."""
    return {c.pid for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid}


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop(pids: list[int], grace: float = 10.0) -> tuple[list[int], list[int]]:
    """SIGTERM the groups of ``pids`` and all their descendants, SIGKILL what outlives ``grace``.

    Returns (every PID signalled, the PIDs still alive at the end: e.g. another user's, which we may not signal).
    """
    ours = set(pids)
    targets = ours | descendants(ours)
    for pid in ours:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass  # not a group leader, or not ours to signal: the per-process signals below still try
    _signal(targets, "terminate")
    _wait(targets, grace)
    _signal({p for p in targets if alive(p)}, "kill")
    _wait(targets, grace)  # SIGKILL is not instantaneous either
    for pid in ours:  # reap those that are this process's own children
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    return sorted(targets), sorted(p for p in targets if alive(p))


def _signal(pids: set[int], how: str) -> None:
    for pid in pids:
        try:
            getattr(psutil.Process(pid), how)()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass  # gone already, or not ours to signal: stop() reports what is still alive


def _wait(pids: set[int], grace: float) -> None:
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
