"""A real gRPC deployment on loopback (TLS + SuperNode authentication). (A simulation on an existing Ray cluster:
tests/test_dying_clients.py.)

Every process a test starts is stopped by PID (its process group and descendants), never by name.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulations import deploy, procs

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
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
        run = deploy.flwr_run(folder, ROOT, f"set='rounds=2 data.num_clients=3 data.partition.kind=iid "
                                            f"strategy.min_train_clients=2 strategy.round_timeout_s=240' out='{out}'",
                              timeout=500)
        watcher.join(5)
        assert victim in stopped_victim and run["status"] == "finished:completed", run
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["rounds"] == 2 and summary["final_accuracy"] > 0.3
        assert summary["bytes_up"] > 0 and "label_histograms" not in summary  # FedAvg's server never uses them
        assert [(f["client"], f["reason"]) for f in summary["failures"]] in (
            [], [(2, "no reply: the node is no longer connected")])

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
