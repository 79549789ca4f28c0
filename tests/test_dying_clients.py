"""A client process that dies in simulation (killed for memory, a crashed kernel) costs that client's work for one
round, not the experiment: Ray replaces the process (``ray.max_restarts``), messages that reached it while it was
being replaced are sent again, and a run whose client processes keep dying stops with advice.

The clients here are the real finetune role; each train call first leaves a mark naming its round, partition and
process, so a test can kill the very process that runs a given client (found among its own descendants, by PID).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients import common, finetune
from clients.common import server_round
from simulations import deploy, procs
from simulations.loop import RoundFailed
from simulations.runner import run

ACTOR = "ray::ClientAppActor"


def marking_app(marks: Path, die: bool = False, pause: float = 1.5) -> ClientApp:
    """The finetune role; each train call writes ``r<round>-p<partition>-<pid>`` in ``marks`` first, then dies
    (``die``: SIGKILL to its own process, as the OOM killer would) or pauses so that a kill lands mid-task."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        (marks / f"r{server_round(msg)}-p{context.node_config['partition-id']}-{os.getpid()}").touch()
        if die:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(pause)
        return finetune.train(msg, context)

    app.evaluate()(finetune.evaluate)
    app.query()(common.query)
    return app


def marked(marks: Path, rnd: int) -> dict[int, int]:
    """Partition -> process that ran its train message in round ``rnd``."""
    out = {}
    for f in marks.glob(f"r{rnd}-p*"):
        _, part, pid = f.name.split("-")
        out[int(part[1:])] = int(pid)
    return out


def actors(root: int) -> set[int]:
    """Live client-actor processes under ``root``."""
    found = set()
    for pid in procs.descendants({root}):
        try:
            if psutil.Process(pid).cmdline()[0].startswith(ACTOR):
                found.add(pid)
        except (psutil.Error, IndexError):
            continue
    return found


class Killer(threading.Thread):
    """Kills (SIGKILL, by PID) the first process under ``root`` seen running a round-1 client, then counts the live
    client actors while round 3 runs."""

    def __init__(self, marks: Path, root: int) -> None:
        super().__init__(daemon=True)
        self.marks, self.root = marks, root
        self.killed: tuple[int, int] | None = None  # (partition, pid)
        self.live_in_round_3: set[int] = set()

    def run(self) -> None:
        deadline = time.monotonic() + 400
        while self.killed is None and time.monotonic() < deadline:
            for part, pid in marked(self.marks, 1).items():
                if pid in actors(self.root):
                    os.kill(pid, signal.SIGKILL)
                    self.killed = (part, pid)
                    break
            time.sleep(0.05)
        while not marked(self.marks, 3) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.live_in_round_3 = actors(self.root)


def _ray_head(tmp_path: Path) -> tuple[int, dict, str]:
    """A Ray head on loopback with 2 CPUs and a temp dir of its own; returns its PID, env and address."""
    port = deploy.free_port()
    ray_bin = str(Path(sys.executable).parent / "ray")
    # short temp dir: Ray's socket paths must fit 107 characters
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray-", dir="/tmp")}
    head = procs.start([ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                        "--num-cpus=2", "--include-dashboard=false", "--block"], tmp_path / "ray.log", env)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if subprocess.run([ray_bin, "status", f"--address=127.0.0.1:{port}"], capture_output=True,
                          env=env).returncode == 0:
            break
        time.sleep(1)
    return head, env, f"127.0.0.1:{port}"


@pytest.mark.integration
@pytest.mark.parametrize("where", ["local", "cluster"])
def test_a_killed_client_process_costs_one_round_of_its_work(where, tiny_cfg, tmp_path):
    """6 clients on a pool of 2 client processes; one process is SIGKILLed while it trains a client in round 1.

    Exactly that client fails, with the reason; the round and the run complete; round 3 has every client back on a
    pool of full size. 'cluster' joins an existing Ray head (its processes are the head's, not this test's)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    head = None
    ray = {}
    if where == "cluster":
        head, ray_env, address = _ray_head(tmp_path)
        ray = {"address": address}
    cfg = tiny_cfg(rounds=3, data={"num_clients": 6}, ray=ray)
    killer = Killer(marks, head or os.getpid())
    killer.start()
    try:
        summary = run(cfg, tmp_path / "run", client_app=marking_app(marks))
    finally:
        if head is not None:
            stopped, _ = procs.stop([head], grace=15)
            shutil.rmtree(ray_env["RAY_TMPDIR"], ignore_errors=True)  # the head's own temp dir
    killer.join(timeout=60)
    assert killer.killed is not None, "no client process was seen training in round 1"
    part, pid = killer.killed
    assert summary["status"] == "finished" and summary["rounds"] == 3
    failures = summary["failures"]
    assert [(f["round"], f["client"], f["kind"]) for f in failures] == [(1, part, "train")], failures
    assert "client process died while running it" in failures[0]["reason"]
    assert set(marked(marks, 3)) == set(range(6))  # every client trained in the last round
    assert pid not in marked(marks, 3).values()
    pool = 2 // cfg.ray.client_num_cpus if head else (os.cpu_count() or 1) // cfg.ray.client_num_cpus
    assert len(killer.live_in_round_3) == pool, killer.live_in_round_3  # the pool healed, nothing leaked
    rows = [json.loads(r) for r in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    assert rows[3]["bytes_up"] == rows[2]["bytes_up"] > rows[1]["bytes_up"]  # 6 updates, 6 updates, 5 updates
    if head is not None:
        assert not any(procs.alive(p) for p in stopped)
    else:  # the local Ray instance and its client processes are gone with the run
        deadline = time.monotonic() + 30
        while actors(os.getpid()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not actors(os.getpid())


@pytest.mark.integration
def test_client_processes_that_keep_dying_stop_the_run_with_advice(tiny_cfg, tmp_path):
    """Every client kills its own process on every train message (an OOM on every client): after each process was
    replaced ray.max_restarts times the round has too few updates and the run stops, saying why and what to change."""
    marks = tmp_path / "marks"
    marks.mkdir()
    cfg = tiny_cfg(rounds=2, data={"num_clients": 4}, ray={"max_restarts": 1})
    with pytest.raises(RoundFailed, match=r"(?s)round 1: only 0 of 4 .*client process died while running it"
                                          r".*ray.max_restarts=1 times.*train.batch_size"):
        run(cfg, tmp_path / "run", client_app=marking_app(marks, die=True))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["rounds"] == 0
    assert {f["client"] for f in summary["failures"]} == set(range(4))
    pool = (os.cpu_count() or 1) // cfg.ray.client_num_cpus
    assert len({pid for pid in marked(marks, 1).values()}) <= pool * (1 + cfg.ray.max_restarts)  # bounded
