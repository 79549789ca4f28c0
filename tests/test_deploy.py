"""A real deployment on loopback: SuperNodes over HTTPS (TLS + SuperNode authentication), and `fedgen deploy run`.
(A simulation on an existing Ray cluster: tests/test_dying_clients.py.)

Every process a test starts is stopped by PID (its process group and descendants), never by name.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from simulations import deploy, procs

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_a_secure_federation_over_grpc_survives_a_dying_supernode_and_refuses_an_unregistered_one(tmp_path):
    """Three SuperNodes over TLS with SuperNode authentication; one is stopped (by PID) once round 1 is recorded.
    Round 2 goes on with the two left (strategy.min_train_clients=2) and the run finishes, the stopped node's missing
    reply recorded. Then a SuperNode whose key was never registered tries to join and is refused."""
    import threading

    folder = tmp_path / "deploy"
    state = deploy.up(folder, nodes=3, secure=True)
    out = tmp_path / "run"
    victim = state["pids"][3]  # the SuperNode of partition 2
    stopped_victim = []

    def stop_after_round_1():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            rows = out / "rounds.jsonl"
            if rows.exists() and any(json.loads(r)["round"] == 1 for r in rows.read_text().splitlines() if r):
                stopped_victim.extend(procs.stop([victim])[0])
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=stop_after_round_1, daemon=True)
    try:
        assert state["secure"] and len(state["pids"]) == 4
        watcher.start()
        sets = ["rounds=2", "data.num_clients=3", "data.partition.kind=iid", "strategy.min_train_clients=2",
                "strategy.round_timeout_s=240"]
        run = deploy.flwr_run(folder, ROOT, {"config": "simulations/configs/digits_domains.yaml",
                                             "set": json.dumps(sets), "out": str(out)}, on_line=lambda line: None)
        watcher.join(5)
        assert victim in stopped_victim and run["status"] == "finished:completed", run
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["rounds"] == 2 and summary["final_accuracy"] > 0.3
        assert summary["bytes_up"] > 0 and "label_histograms" not in summary  # FedAvg's server never uses them
        # round 2: the stopped node sends nothing; if the server still listed it (Flower notices a dead node by its
        # missed heartbeats) and sent it the model, that message is recorded as a failure, and nothing else is
        ledger = list(csv.DictReader((out / "bytes.csv").open()))
        sent = any(e["round"] == "2" and e["client"] == "2" and e["direction"] == "down" for e in ledger)
        assert not any(e["round"] == "2" and e["client"] == "2" and e["direction"] == "up" for e in ledger)
        assert [(f["client"], f["reason"]) for f in summary["failures"]] == (
            [(2, "no reply: the node is no longer connected")] if sent else [])

        key, _ = deploy.make_node_key(folder / "keys", "unregistered")
        intruder = deploy.start_supernode(folder, 0, 3, key)
        deadline = time.monotonic() + 60
        while procs.alive(intruder) and time.monotonic() < deadline:
            time.sleep(0.5)
        log = max(folder.glob("supernode-0-*.log"), key=lambda p: p.stat().st_mtime).read_text()
        assert "Failed to activate SuperNode" in log
        listed = json.loads(deploy.flwr(folder, "supernode", "list", deploy.CONNECTION, "--format", "json").stdout)
        assert len(listed["nodes"]) == 3  # the three registered ones (the stopped one is still registered)
    finally:
        stopped, left = deploy.down(folder)
    assert state["pids"][0] in stopped and left == []
    assert not any(procs.alive(p) for p in stopped)
    assert deploy.load_state(folder)["pids"] == []


def test_down_stops_only_what_it_started(tmp_path):
    folder = tmp_path / "deploy"
    folder.mkdir()
    mine = procs.start([sys.executable, "-c", "import time; time.sleep(60)"], folder / "mine.log")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (folder / deploy.STATE_FILE).write_text(json.dumps({"pids": [mine], "nodes": 0, "secure": False}))
    try:
        assert deploy.down(folder, grace=5) == ([mine], [])
        assert not procs.alive(mine) and other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_down_keeps_and_reports_what_it_could_not_stop(tmp_path, monkeypatch):
    """A process we may not signal (another user's, say) stays recorded, and a later `down` tries again."""
    import psutil

    folder = tmp_path / "deploy"
    folder.mkdir()
    mine = procs.start([sys.executable, "-c", "import time; time.sleep(60)"], folder / "mine.log")
    (folder / deploy.STATE_FILE).write_text(json.dumps({"pids": [mine], "nodes": 0, "secure": False}))
    try:
        with monkeypatch.context() as m:
            def denied(*args):
                raise PermissionError(1, "Operation not permitted")

            def access_denied(self):
                raise psutil.AccessDenied(self.pid)

            m.setattr(os, "killpg", denied)
            m.setattr(psutil.Process, "terminate", access_denied)
            m.setattr(psutil.Process, "kill", access_denied)
            assert deploy.down(folder, grace=1) == ([mine], [mine])
        assert procs.alive(mine) and deploy.load_state(folder)["pids"] == [mine]
        assert deploy.down(folder, grace=5) == ([mine], [])
        assert not procs.alive(mine) and deploy.load_state(folder)["pids"] == []
    finally:
        procs.stop([mine], grace=5)


def test_certs_and_node_keys_load_as_flower_loads_them(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    paths = deploy.make_certs(tmp_path)
    cert = x509.load_pem_x509_certificate(paths["cert"].read_bytes())
    ca = x509.load_pem_x509_certificate(paths["ca"].read_bytes())
    assert cert.issuer == ca.subject
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    private, public = deploy.make_node_key(tmp_path, "n0")
    assert load_ssh_private_key(private.read_bytes(), password=None).key_size == 384
    assert load_ssh_public_key(public.read_bytes()).key_size == 384


def _fedgen(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simulations.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.e2e
def test_fedgen_deploy_run_keeps_the_nodes_budget_and_results_and_names_a_dead_superlink(tmp_path, tiny_cfg):
    """`fedgen deploy run` from another directory, end to end, against two SuperNodes that keep their own state
    (--state-dir) and cap their own privacy (--dp-epsilon-max 4):
    1. a private FedDDPM run spending epsilon 3, whose experiment name holds quotes and braces, shows its rounds;
    2. the same run folder again is refused before anything is sent (exit 2), naming --resume and --overwrite;
    3. a renamed experiment asking for epsilon 10 finds the nodes' ledgers at 3 and their cap at 4: both refuse;
    4. a SuperLink stopped (by PID) after round 1 of a third run ends the command with what to do, not a traceback.
    """
    from test_fedddpm import _cfg

    from fedgen.config import dump_yaml

    cfg = _cfg(tiny_cfg, {"epsilon": 3.0}, min_train_clients=1).model_copy(update={"rounds": 1})
    config = tmp_path / "private.yaml"
    config.write_text(dump_yaml(cfg).replace("num_clients: 3", "num_clients: 2"))
    folder = tmp_path / "deploy"
    state = deploy.up(folder, nodes=2, secure=False, state_root=tmp_path / "nodes", dp_epsilon_max=4)
    orphans: list[int] = []
    try:
        name = """it's "quoted" {braced}"""
        first = _fedgen("deploy", "run", str(config), "--set", f"name={json.dumps(name)}", "--out", "run1",
                        "--dir", str(folder), cwd=tmp_path)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert "round   1/1" in first.stdout and "finished:completed" in first.stdout
        assert yaml.safe_load((tmp_path / "run1" / "config.yaml").read_text())["name"] == name
        ledgers = sorted((tmp_path / "nodes").glob("node-*/dp-spent-*.json"))
        assert len(ledgers) == 2  # each node's own, in its own state-dir

        again = _fedgen("deploy", "run", str(config), "--out", "run1", "--dir", str(folder), cwd=tmp_path)
        assert again.returncode == 2 and "holds a run already" in again.stderr
        assert "--resume" in again.stderr and "--overwrite" in again.stderr

        greedy = _fedgen("deploy", "run", str(config), "--set", "name=renamed", "--set", "dp.epsilon=10",
                         "--out", "run2", "--dir", str(folder), cwd=tmp_path)
        assert greedy.returncode == 1
        reasons = [f["reason"] for f in json.loads((tmp_path / "run2" / "summary.json").read_text())["failures"]]
        assert len(reasons) == 2 and all("would bring its epsilon from 3 to" in r and
                                         "over the node's own cap dp-epsilon-max=4.0" in r for r in reasons), reasons

        plain = subprocess.Popen(  # the same experiment, non-private: it trains round after round
            [sys.executable, "-m", "simulations.cli", "deploy", "run", str(config), "--set", "dp.epsilon=null",
             "--set", "rounds=20", "--set", "name=plain", "--out", str(tmp_path / "run3"), "--dir", str(folder)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        rows = tmp_path / "run3" / "rounds.jsonl"
        while time.monotonic() < deadline and not (rows.exists() and len(rows.read_text().splitlines()) >= 2):
            time.sleep(0.5)
        assert len(rows.read_text().splitlines()) >= 2, "round 1 never finished"
        orphans += procs.descendants({state["pids"][0]})  # its ServerApp outlives it: stopped below, by PID
        os.kill(state["pids"][0], signal.SIGKILL)  # the SuperLink
        out, err = plain.communicate(timeout=180)
        assert plain.returncode == 1, out[-2000:] + err[-2000:]
        assert "the SuperLink stopped answering" in err and "Traceback" not in err
        assert f"{tmp_path / 'run3'} holds rounds up to" in err and "fedgen deploy run --resume" in err
    finally:
        stopped, left = deploy.down(folder)
        left += procs.stop(sorted(orphans), grace=5)[1]
    assert left == []


def test_a_run_config_carries_any_override_text(tmp_path):
    """What `fedgen deploy run` sends as the run config (a TOML file) gives the ServerApp back exactly the overrides
    it was given, quotes, braces and spaces included."""
    import tomllib

    from simulations.server_app import run_overrides

    sets = ["strategy.templates=['a \"b\" {c}', \"it's\"]", "name=x y", "set={'a': 1}"]
    path = deploy.run_config_file(tmp_path, {"config": "c.yaml", "set": json.dumps(sets), "overwrite": True})
    values = tomllib.loads(path.read_text())
    assert run_overrides(values["set"]) == sets and values["overwrite"] is True
    assert run_overrides("rounds=2 name='a b'") == ["rounds=2", "name=a b"]  # typed by hand on `flwr run`


def test_the_readmes_separate_machines_table_is_what_deploy_up_starts():
    """The README's server and client commands are the ones `fedgen deploy up` starts on loopback (the deployment
    tests above run them), with the README's addresses and files."""
    import shlex

    readme = (ROOT / "README.md").read_text()
    tls = {"ca": "ca.crt", "cert": "server.pem", "key": "server.key"}
    server = shlex.join(deploy.superlink_command("0.0.0.0", 8000, tls, "state.db"))
    client = shlex.join(deploy.supernode_command(
        "SERVER:8000", 'partition-id=k num-partitions=n state-dir="/var/lib/fedgen" dp-epsilon-max=10', "ca.crt",
        "node-k"))
    assert f"| server | `{server}` |" in readme
    assert f"then `{client}` |" in readme


class _FakeFlwr:
    """`flwr` as the deployment's SuperLink answers it: `run` starts run 7, `list` says 'running' ``polls`` times
    (then ``then``: a final status, or None for a SuperLink that no longer answers), `stop` stops it."""

    def __init__(self, polls: int, then: str | None):
        self.polls, self.then, self.calls = polls, then, []

    def __call__(self, folder, *args, timeout=120):
        self.calls.append(args[:2])
        out = ""
        if args[0] == "run":
            out = json.dumps({"run-id": 7})
        elif args[0] == "list":
            self.polls -= 1
            status = "running" if self.polls >= 0 else self.then
            out = json.dumps({"runs": [{"run-id": 7, "status": status}]}) if status else "Connection refused"
        return subprocess.CompletedProcess(args, 0, out, "")


def _clock(monkeypatch, step: float):
    """time.monotonic advancing ``step`` seconds at every sleep: hours of polling in no time."""
    now = [0.0]
    monkeypatch.setattr(deploy.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(deploy.time, "sleep", lambda s: now.__setitem__(0, now[0] + step))


def _no_logs(monkeypatch):
    monkeypatch.setattr(deploy, "_bin", lambda name: "true")  # `flwr log --stream` stands in as `true`


def test_a_deployed_run_has_no_deadline_and_a_dead_superlink_is_named(tmp_path, monkeypatch):
    _no_logs(monkeypatch)
    _clock(monkeypatch, 60.0)
    fake = _FakeFlwr(polls=30, then="finished:completed")  # 30 minutes of 'running'
    monkeypatch.setattr(deploy, "flwr", fake)
    assert deploy.flwr_run(tmp_path, ROOT, {"config": "c.yaml"}, poll=60)["status"] == "finished:completed"
    monkeypatch.setattr(deploy, "flwr", _FakeFlwr(polls=3, then=None))
    with pytest.raises(deploy.SuperLinkGone, match="stopped answering during run 7"):
        deploy.flwr_run(tmp_path, ROOT, {"config": "c.yaml"}, poll=60, patience=30)


def test_ctrl_c_stops_the_run_on_the_superlink(tmp_path, monkeypatch):
    _no_logs(monkeypatch)
    fake = _FakeFlwr(polls=100, then="finished:completed")
    monkeypatch.setattr(deploy, "flwr", fake)

    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(deploy.time, "sleep", interrupt)
    lines = []
    with pytest.raises(KeyboardInterrupt):
        deploy.flwr_run(tmp_path, ROOT, {"config": "c.yaml"}, on_line=lines.append)
    assert ("stop", "7") in fake.calls and lines == ["stopped run 7 on the SuperLink"]
