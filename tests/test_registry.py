"""The registry as the one place a method is declared: a toy method kept in its own files (tests/toymethod/) is
found through FEDGEN_METHODS and runs end to end, with its own section, roles, task and tier, and no shared module
names it; what crosses the Grid is exactly what each method declares."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from inprocess import InProcessGrid

import strategies
from clients.app import app, build_app
from fedgen import discovery
from fedgen.comm import DOWN, UP
from fedgen.config import SECTIONS, ConfigError, validate
from fedgen.data import load_federation
from fedgen.wire import SERVER_ROUND
from simulations.server_app import run_experiment

ROOT = Path(__file__).resolve().parents[1]
TOY = Path(__file__).parent / "toymethod"
EDGE_CLOUD = "edge-cloud"


@pytest.fixture
def toy_method(monkeypatch):
    """The toy method, discovered as a user's would be; forgotten afterwards, so that other tests see only fedgen's."""
    monkeypatch.setenv(discovery.ENV, "toymethod")
    yield strategies.method("toy")
    for name in ("toy", "toyshrink"):
        del strategies.METHODS[name], SECTIONS[name]
    for name in [n for n in sys.modules if n.startswith("toymethod")]:
        del sys.modules[name]
        discovery._imported.discard(name)


def test_each_task_has_its_own_extras(toy_method):
    """A task that does not set its extras (ToyTask) still has a dict of its own: filling one leaves the others."""
    from toymethod.strategy import ToyTask

    from fedgen.tasks import Task

    a, b = (ToyTask(type("Ctx", (), {"cfg": type("Cfg", (), {"strategy": type("S", (), {"target": 1.0})})}), None)
            for _ in range(2))
    a.extras["mine"] = 1
    assert a.extras == {"mine": 1} and b.extras == {} and a.extras is not b.extras
    assert "mine" not in getattr(Task, "extras", {})


def test_a_method_is_added_by_files_alone(toy_method):
    """Its files are its own; no shared module names it; its section and roles are the registry's."""
    assert {p.name for p in TOY.glob("*.py")} == {"__init__.py", "strategy.py", "client.py"}
    shared = [p for d in ("fedgen", "strategies", "clients", "simulations") for p in (ROOT / d).rglob("*.py")]
    assert shared and not [p for p in shared if "toymethod" in p.read_text() or '"toy"' in p.read_text()]
    assert type(validate({"strategy": {"name": "toy"}}).strategy).__module__ == "toymethod.strategy"
    assert strategies.client_roles()["train.toy"] == "toymethod.client:answer"
    with pytest.raises(Exception, match="strategy.proximal_mu: unknown key"):
        validate({"strategy": {"name": "toy", "proximal_mu": 0.1}})


def test_a_method_adds_a_term_to_local_training_by_its_own_files(toy_method, tiny_cfg, tmp_path):
    """Shrink is Flower's FedAvg plus a weight-norm term of its own on the clients: the term is applied (the global
    model shrinks against FedAvg's from the same start), and nothing else changes."""
    norms = {}
    for name in ("fedavg", "toyshrink"):
        run_experiment(InProcessGrid(build_app(), 3), tiny_cfg(rounds=1, strategy={"name": name}), tmp_path / name)
        state = torch.load(tmp_path / name / "model.pt")
        norms[name] = float(sum((v.float() ** 2).sum() for k, v in state.items() if "weight" in k))
    assert norms["toyshrink"] < 0.9 * norms["fedavg"]


def test_fedgen_names_a_missing_method_module(monkeypatch):
    monkeypatch.setenv(discovery.ENV, "no_such_method_module")
    with pytest.raises(ConfigError, match="method module 'no_such_method_module' cannot be imported"):
        discovery.discover_methods()


def test_a_fedavg_client_loads_no_diffusion_or_dp_library(tmp_path):
    """The ClientApp of a FedAvg run imports, and trains, without diffusers, transformers, opacus or torch-pruning
    (every method is discovered; their heavy parts load only when a run uses them), and, once digits-domains is
    rendered on the machine, without scikit-learn and torchvision (each client process reads the rendering)."""
    from fedgen.data.digits import default_splits

    default_splits()  # rendered once on this machine
    code = f"""
import sys
from inprocess import InProcessGrid
from clients.app import app
from simulations.server_app import run_experiment
from fedgen.config import validate
heavy = ("diffusers", "transformers", "opacus", "torch_pruning", "sklearn", "torchvision")
assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]
cfg = validate({{"rounds": 1, "data": {{"num_clients": 2, "partition": {{"kind": "iid"}}}}}})
run_experiment(InProcessGrid(app, 2), cfg, {str(tmp_path / "run")!r})
print(sorted(m for m in heavy if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_toy_method_runs_end_to_end_through_the_registry_alone(toy_method, tiny_cfg, tmp_path):
    cfg = tiny_cfg(rounds=3, strategy={"name": "toy", "scale": 2.0, "target": 4.0})
    assert type(cfg.strategy).__name__ == "ToyConfig"
    grid = InProcessGrid(build_app(), cfg.data.num_clients)
    summary = run_experiment(grid, cfg, tmp_path / "run")
    out = tmp_path / "run"

    # several messages to each node, of two types, in one exchange: all delivered, answered and accounted
    per_round = [m for m in grid.delivered if m.metadata.message_type in ("train.toy", "query.toy")]
    assert len(per_round) == 3 * 2 * 3
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["train/replies"] for r in rows[1:]] == [6, 6, 6] and summary["failures"] == []
    entries = list(csv.DictReader(open(out / "bytes.csv")))
    round1 = [e for e in entries if e["round"] == "1" and e["tier"] == "client-server"]
    assert sorted((e["direction"], e["kind"]) for e in round1) == sorted(
        [(DOWN, "train.toy"), (DOWN, "query.toy"), (UP, "train.toy"), (UP, "query.toy")] * 3)

    # its own headline metric (lower is better), columns, final model file and tier
    fed = load_federation(cfg.data, cfg.seed)
    value = float(np.mean([fed.client(k)[0].images.mean() / 255 * 2.0 for k in range(3)]))
    distances = [abs(value + r - 4.0) for r in (1, 2, 3)]
    assert [r["distance"] for r in rows[1:]] == pytest.approx(distances)
    assert summary["metric"] == {"name": "distance", "higher_is_better": False}
    assert summary["final"] == pytest.approx(distances[-1]) and summary["best"] == pytest.approx(min(distances))
    assert "final_accuracy" not in summary
    assert next(csv.reader(open(out / "rounds.csv"))) == ["round", "distance", "bytes_up", "bytes_down", "seconds"]
    assert (out / "distance.png").exists() and not (out / "accuracy.png").exists()
    assert torch.load(out / "toy.pt")["value"].item() == pytest.approx(value + 3)
    assert summary["bytes_by_tier"][EDGE_CLOUD] == {"up": 3 * 6 * 1000, "down": 0}
    assert summary["bytes_by_tier"]["client-server"]["up"] + 3 * 6 * 1000 == summary["bytes_up"]


def test_the_report_sorts_by_the_headline_in_its_direction_and_shows_tiers(toy_method, tiny_cfg, tmp_path):
    from fedgen.report import write_report

    runs = {}
    for label, target in (("far", 100.0), ("near", 5.0)):
        cfg = tiny_cfg(rounds=1, strategy={"name": "toy", "target": target})
        run_experiment(InProcessGrid(build_app(), 3), cfg, tmp_path / label)
        runs[label] = {0: tmp_path / label}
    md = write_report(tmp_path, "toys", runs, "test machine")
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[0] == ("| method | final distance | best distance | MB up | MB down | MB edge-cloud down |"
                        " MB edge-cloud up | MB long-haul | wall time (s) |")
    assert [r.split("|")[1].strip() for r in table[2:]] == ["near", "far"]  # lower is better: near first
    assert "lower is better" in md and (tmp_path / "distance.png").exists()


# what leaves a client, per method: the exact metric keys of every reply, by message type
EXPECTED_KEYS = {
    "fedavg": {"query": {"partition-id", "num-examples", "num-test-examples"},
               "train": {"train-loss", "num-examples"},
               "evaluate": {"eval-loss", "eval-acc", "num-examples", "partition-id", "domain-correct", "domain-count"}},
    "oscar": {"query": {"partition-id", "num-examples", "num-test-examples"},
              "train.encode": {"class-ids", "caption-seconds", "encode-seconds"},
              "evaluate": {"eval-loss", "eval-acc", "num-examples", "partition-id", "domain-correct", "domain-count"}},
}
for _name in ("fedprox", "feddyn", "scaffold", "moon", "fedadam", "fedyogi", "feddf"):  # the model (and SCAFFOLD's
    # control; FedDF's of the client's architecture)
    EXPECTED_KEYS[_name] = EXPECTED_KEYS["fedavg"]
EXPECTED_KEYS["gptfl"] = {**EXPECTED_KEYS["fedavg"], "query.labels": {"label-count"}}  # beside the label names, or
# labels=private: only SecAgg+'s records (tests/test_gptfl.py)
EXPECTED_KEYS["fedphd"] = {"query": {*EXPECTED_KEYS["fedavg"]["query"], "label-histogram"},  # its edge selection's
                          "train.fedphd": {"train-loss", "num-examples"}}  # (tests/test_fedphd.py)
EXPECTED_KEYS["fedddpm"] = {"query": EXPECTED_KEYS["fedavg"]["query"],  # and the denoiser, or pseudo-features
                           "train.dpdiffusion": {"train-loss", "num-examples", "partition-id", "dp-epsilon",
                                                 "dp-epsilon-opacus", "dp-sigma"}}  # (tests/test_fedddpm.py)


def test_every_federated_method_declares_what_its_clients_send():
    assert set(EXPECTED_KEYS) == {n for n, m in strategies.methods().items() if m.federated}


@pytest.mark.parametrize("name", sorted(set(EXPECTED_KEYS) - {"scaffold", "moon", "gptfl", "fedphd", "fedddpm"}))
# those: test_baselines.py, test_gptfl.py, test_fedphd.py and test_fedddpm.py
def test_only_what_a_method_needs_leaves_a_client(name, tiny_cfg, tiny_models, tmp_path):
    extra = {}
    if name == "oscar":
        extra = dict(rounds=1, foundation={
            "profile": "pretrained", "captioner": {"kind": "blip", "path": str(tiny_models / "blip"),
                                                   "max_new_tokens": 4},
            "generator": {"path": str(tiny_models / "sd"), "steps": 2, "size": 32, "batch_size": 50}})
    own = {"oscar": {"images_per_encoding": 2, "epochs": 1},
           "feddf": {"architectures": ["cnn", "resnet8"], "max_steps": 10, "eval_every": 10}}
    strategy = {"name": name, "fraction_evaluate": 1.0, **own.get(name, {})}
    cfg = tiny_cfg(strategy=strategy, **{"rounds": 1, **extra})  # what leaves a client in a round
    grid = InProcessGrid(app, 3)
    run_experiment(grid, cfg, tmp_path / "run")
    kinds = {m.metadata.message_id: m.metadata.message_type for m in grid.delivered}
    seen: dict[str, set] = {}
    for reply in grid.received:
        kind = kinds[reply.metadata.reply_to_message_id]
        assert list(reply.content.metric_records) == ["metrics"] and not reply.content.config_records
        seen.setdefault(kind, set()).update(reply.content["metrics"].keys())
        if kind != "train":  # only a train reply carries a model back
            assert not reply.content.array_records or kind == "train.encode"
    assert seen == EXPECTED_KEYS[name]


# --- replies Flower's aggregation would refuse ------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["extra metric key", "second MetricRecord", "second ArrayRecord"])
def test_replies_flower_would_refuse_are_rejected_and_the_run_goes_on(fault, tiny_cfg, tmp_path, monkeypatch):
    from clients import finetune

    original = finetune.train

    def odd(msg, context):
        reply = original(msg, context)
        if context.node_config["partition-id"] == 1:
            if fault == "extra metric key":
                reply.content["metrics"]["extra"] = 1.0
            elif fault == "second MetricRecord":
                reply.content["more"] = MetricRecord({"x": 1.0})
            else:
                reply.content["more"] = ArrayRecord({"x": torch.zeros(2)})
        return reply

    monkeypatch.setattr(finetune, "train", odd)
    summary = run_experiment(InProcessGrid(app, 3), tiny_cfg(rounds=1), tmp_path / "run")
    assert summary["status"] == "finished" and summary["final"] is not None
    assert [(f["round"], f["client"], f["kind"]) for f in summary["failures"]] == [(1, 1, "train")]
    reason = summary["failures"][0]["reason"]
    expected = {"extra metric key": "record 'metrics': extra ['extra']", "second MetricRecord": "2 MetricRecords",
                "second ArrayRecord": "2 ArrayRecords"}[fault]
    assert expected in reason


# --- FedDyn: a client's state moves only with an aggregated update ------------------------------------------------
def test_feddyn_client_state_follows_only_aggregated_updates(tiny_cfg, tmp_path, monkeypatch):
    """Client 1's round-1 update is rejected (NaN) after it saved its state. Afterwards h = (1/m) sum_k g_k, with
    each g_k the state the client will continue from (the round the server names), as FedDyn requires."""
    from clients import finetune, local_update
    from clients import state as client_state
    from fedgen import checkpoint

    original = finetune.train

    def nan_once(msg, context):
        reply = original(msg, context)
        if context.node_config["partition-id"] == 1 and msg.content["config"][SERVER_ROUND] == 1:
            state = reply.content["arrays"].to_torch_state_dict()
            first = next(iter(state))
            state[first] = state[first] * float("nan")
            reply.content["arrays"] = ArrayRecord(state)
        return reply

    monkeypatch.setattr(finetune, "train", nan_once)
    cfg = tiny_cfg(rounds=2, model={"norm": "group"}, strategy={"name": "feddyn", "feddyn_alpha": 0.1})
    grid = InProcessGrid(app, 3)
    summary = run_experiment(grid, cfg, tmp_path / "run")
    assert [(f["round"], f["client"]) for f in summary["failures"]] == [(1, 1)]
    strategy_state = checkpoint.load(tmp_path / "run")["strategy"]
    assert strategy_state["aggregated"] == {0: 2, 1: 2, 2: 2}
    sent_r2 = {grid.contexts[m.metadata.dst_node_id].node_config["partition-id"]: m.content["config"]["state-round"]
               for m in grid.delivered if m.metadata.message_type == "train" and
               m.content["config"][SERVER_ROUND] == 2}
    assert sent_r2 == {0: 1, 1: 0, 2: 1}  # client 1 starts round 2 afresh: its round-1 update was not used

    h = strategy_state["h"]
    grads = []
    for node, context in grid.contexts.items():
        pid = context.node_config["partition-id"]
        msg = Message(RecordDict({"config": ConfigRecord({
            "client-state-dir": str((tmp_path / "run" / "client_state").resolve()), SERVER_ROUND: 3,
            "state-round": strategy_state["aggregated"].get(pid, 0)})}), dst_node_id=node,
            message_type=MessageType.TRAIN)
        grads.append(client_state.load(msg, context, local_update.FEDDYN_STATE, pid))
    names = list(h)
    for i, name in enumerate(names):
        mean_g = sum(g[i].double() for g in grads) / 3
        assert torch.allclose(h[name], mean_g, atol=1e-6), name
    assert not list((tmp_path / "run" / "client_state").glob("*-r0.pt"))


# --- nodes that go away --------------------------------------------------------------------------------------------
def test_a_round_goes_on_with_the_nodes_still_connected(tiny_cfg, tmp_path):
    """A node that leaves after round 1 (a dead SuperNode) is not waited for: later rounds sample the others."""
    from fedgen.results import RunRecorder

    grid = InProcessGrid(app, 3)
    pid_of = {n: c.node_config["partition-id"] for n, c in grid.contexts.items()}
    gone = next(n for n, p in pid_of.items() if p == 2)
    real_after = RunRecorder.record_round

    def leave_after_round_1(self, rnd, scores, extras):
        if rnd == 1:
            grid.contexts.pop(gone)
        return real_after(self, rnd, scores, extras)

    RunRecorder.record_round = leave_after_round_1
    try:
        summary = run_experiment(grid, tiny_cfg(rounds=2), tmp_path / "run")
    finally:
        RunRecorder.record_round = real_after
    trained = [pid_of[m.metadata.dst_node_id] for m in grid.delivered if m.metadata.message_type == "train"]
    rounds = [sorted(trained[:3]), sorted(trained[3:])]  # sampled in random order
    assert rounds == [[0, 1, 2], [0, 1]] and summary["status"] == "finished"
    assert summary["failures"] == []


def test_too_few_nodes_stop_the_run_after_the_round_timeout(tiny_cfg, tmp_path):
    from simulations.grid import NodesUnavailable

    grid = InProcessGrid(app, 3)
    nodes = list(grid.get_node_ids())
    real_send = grid.send_and_receive

    def lose_two_after_discovery(messages, *, timeout=None):
        replies = real_send(messages, timeout=timeout)
        if any(m.metadata.message_type == "query" for m in messages):
            for n in nodes[1:]:
                grid.contexts.pop(n)
        return replies

    grid.send_and_receive = lose_two_after_discovery
    cfg = tiny_cfg(strategy={"min_train_clients": 2, "round_timeout_s": 2})
    with pytest.raises(NodesUnavailable, match=r"only 1 client node\(s\) connected \(partitions \[0\]\), fewer than "
                                               r"the 2 a round needs .* for 2 s"):
        run_experiment(grid, cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


# --- files rewritten whole are replaced, never truncated -----------------------------------------------------------
def test_a_failed_rewrite_leaves_the_previous_file(tmp_path, monkeypatch):
    from pathlib import Path

    from fedgen.results import write_atomic

    path = tmp_path / "rounds.jsonl"
    path.write_text("old\n")

    def broken(self, target):
        raise OSError("disk full")

    monkeypatch.setattr(Path, "replace", broken)
    with pytest.raises(OSError):
        write_atomic(path, "new\n")
    assert path.read_text() == "old\n"
