"""Every strategy against the real ClientApp, in process (the fast path)."""

import csv
import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from inprocess import InProcessGrid

from clients.app import app
from fedgen.data import load_federation
from fedgen.models import build_model
from simulations.server_app import run_experiment

CONTRACT = ["config.yaml", "rounds.csv", "rounds.jsonl", "summary.json", "accuracy.png", "bytes.csv"]


def _run(cfg, tmp_path, name="run"):
    out = tmp_path / name
    summary = run_experiment(InProcessGrid(app, cfg.data.num_clients), cfg, out)
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    return summary, rows, out


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "feddyn", "local", "centralized"])
def test_strategy_learns_and_writes_the_contract(name, tiny_cfg, tmp_path):
    cfg = tiny_cfg(strategy={"name": name})
    summary, rows, out = _run(cfg, tmp_path)
    for f in CONTRACT:
        assert (out / f).stat().st_size > 0, f
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert summary["status"] == "finished" and summary["rounds"] == 2
    assert summary["final_accuracy"] > 0.5  # chance is 0.1
    assert rows[0]["accuracy"] < 0.2  # untrained
    with open(out / "rounds.csv") as f:
        assert next(csv.reader(f)) == ["round", "accuracy", "loss", "bytes_up", "bytes_down", "seconds"]
    for key in ("strategy", "dataset", "partition", "num_clients", "rounds", "seed", "final_accuracy",
                "best_accuracy", "bytes_up", "bytes_down", "wall_seconds", "final", "best", "bytes_by_tier"):
        assert key in summary
    assert summary["metric"] == {"name": "accuracy", "higher_is_better": True}
    assert summary["final"] == summary["final_accuracy"] == rows[-1]["accuracy"]
    assert summary["bytes_by_tier"] == {"client-server": {"up": summary["bytes_up"], "down": summary["bytes_down"]}}
    if name != "local":  # Local-only reports the mean over the clients' models and their spread
        classes = {k for k in rows[-1] if k.startswith("test/acc-class-")}
        assert len(classes) == 10 and "test/acc-tail" not in rows[-1]
    if name in ("local", "centralized"):
        assert summary["bytes_up"] == summary["bytes_down"] == 0
    if name == "local":
        assert sorted(torch.load(out / "client_models.pt")) == [0, 1, 2]
    else:
        assert (out / "model.pt").exists()


def test_bytes_are_counted_per_client_and_round(tiny_cfg, tmp_path):
    cfg = tiny_cfg(strategy={"name": "fedavg"})
    summary, rows, out = _run(cfg, tmp_path)
    fed = load_federation(cfg.data, cfg.seed)
    model_bytes = ArrayRecord(build_model("cnn", fed.num_classes).state_dict()).count_bytes()
    for r in rows[1:]:
        # each of the 3 clients gets the model and sends one back, plus small config / metric records
        assert 3 * model_bytes <= r["bytes_up"] < 3 * model_bytes + 3 * 1_000
        assert 3 * model_bytes <= r["bytes_down"] < 3 * model_bytes + 3 * 4_000
    with open(out / "bytes.csv") as f:
        entries = list(csv.DictReader(f))
    assert {int(e["client"]) for e in entries} == {0, 1, 2}
    up_round1 = [e for e in entries if e["round"] == "1" and e["direction"] == "up"]
    assert len(up_round1) == 3 and all(e["kind"] == "train" for e in up_round1)
    assert summary["bytes_up"] == sum(int(e["bytes"]) for e in entries if e["direction"] == "up")


def test_seeded_runs_repeat_exactly_including_client_sampling(tiny_cfg, tmp_path):
    cfg = tiny_cfg(data={"num_clients": 4}, strategy={"fraction_train": 0.5, "min_train_clients": 2}, rounds=3)

    def sampled(out):
        with open(out / "bytes.csv") as f:
            return [(e["round"], e["client"]) for e in csv.DictReader(f) if e["kind"] == "train"]

    _, rows_a, out_a = _run(cfg, tmp_path, "a")
    _, rows_b, out_b = _run(cfg, tmp_path, "b")
    assert [r["accuracy"] for r in rows_a] == [r["accuracy"] for r in rows_b]
    assert sampled(out_a) == sampled(out_b)
    assert len(sampled(out_a)) == 2 * 2 * 3  # 2 of 4 clients per round, a message each way, 3 rounds


def test_client_sampling_follows_the_seed_alone(tiny_cfg):
    """The sampled partition ids, from the strategy itself with one model for every seed: the same seed samples the
    same clients, another seed others, and each round takes Flower's max(int(n * fraction), min) clients."""
    from flwr.app import ConfigRecord as Config

    from fedgen.comm import ByteLedger
    from simulations.experiment import seed_everything
    from simulations.grid import AccountedGrid
    from strategies import RunContext, method

    cfg = tiny_cfg(data={"num_clients": 6}, strategy={"fraction_train": 0.3, "min_train_clients": 2})
    fed = load_federation(cfg.data, cfg.seed)
    arrays = ArrayRecord(build_model("cnn", fed.num_classes).state_dict())
    grid = AccountedGrid(InProcessGrid(app, 6), ByteLedger())
    grid.discover(cfg.to_json(), 6, 60)

    def draws(seed):
        ctx = RunContext(cfg, fed, lambda: build_model("cnn", fed.num_classes), "cpu", None, ByteLedger())
        strategy = method(cfg.strategy.name).build(ctx)
        seed_everything(seed)
        return [sorted(grid.partition_of[m.metadata.dst_node_id]
                       for m in strategy.configure_train(r, arrays, Config(), grid)) for r in (1, 2, 3)]

    assert draws(0) == draws(0)
    assert draws(0) != draws(1)
    assert all(len(ids) == 2 and set(ids) <= set(range(6)) for ids in draws(0) + draws(1))


def test_feddyn_keeps_client_state_and_fedprox_sends_mu(tiny_cfg, tmp_path):
    cfg = tiny_cfg(strategy={"name": "feddyn", "feddyn_alpha": 0.05})
    grid = InProcessGrid(app, 3)
    run_experiment(grid, cfg, tmp_path / "dyn")
    saved = sorted(f.name for f in (tmp_path / "dyn" / "client_state").iterdir())
    assert saved == [f"feddyn-grad-p{k}-r{r}.pt" for k in range(3) for r in (1, 2)]  # on the clients' side
    sent = [m for m in grid.delivered if m.metadata.message_type == MessageType.TRAIN]
    assert all(m.content["config"]["feddyn-alpha"] == 0.05 for m in sent)

    cfg = tiny_cfg(strategy={"name": "fedprox", "proximal_mu": 0.3})
    grid = InProcessGrid(app, 3)
    run_experiment(grid, cfg, tmp_path / "prox")
    sent = [m for m in grid.delivered if m.metadata.message_type == MessageType.TRAIN]
    assert sent and all(m.content["config"]["proximal-mu"] == 0.3 for m in sent)


def test_feddyn_sends_alpha_in_training_messages_only_and_leaves_the_shared_config_alone(tiny_cfg, tmp_path):
    """The run passes one config record to configure_train and configure_evaluate: FedDyn's keys go into copies, so
    the record is unchanged and evaluation messages do not carry them."""
    from fedgen.wire import FEDDYN_ALPHA, FEDDYN_MEAN_EXAMPLES
    from strategies.feddyn import FedDyn

    grid = InProcessGrid(app, 2)
    grid.partition = {n: k for k, n in enumerate(grid.get_node_ids())}.get
    strategy = FedDyn(alpha=0.05, num_clients=2, param_keys={"w"}, mean_examples=10.0, fraction_train=1.0,
                      min_train_nodes=2, min_available_nodes=2)
    config = ConfigRecord({"experiment": "{}"})
    sent = list(strategy.configure_train(1, ArrayRecord({"w": torch.zeros(2)}), config, grid))
    assert dict(config) == {"experiment": "{}"}
    assert len(sent) == 2 and all(m.content["config"][FEDDYN_ALPHA] == 0.05 for m in sent)
    assert all(m.content["config"][FEDDYN_MEAN_EXAMPLES] == 10.0 for m in sent)

    cfg = tiny_cfg(rounds=1, strategy={"name": "feddyn", "fraction_evaluate": 1.0})
    grid = InProcessGrid(app, 3)
    run_experiment(grid, cfg, tmp_path / "run")
    evaluated = [m for m in grid.delivered if m.metadata.message_type == MessageType.EVALUATE]
    assert len(evaluated) == 3 and not any(FEDDYN_ALPHA in m.content["config"] for m in evaluated)


def test_query_answers_partition_and_counts_and_only_the_facts_asked(tiny_cfg):
    cfg = tiny_cfg()
    grid = InProcessGrid(app, 3)
    node = list(grid.get_node_ids())[2]
    train, test = load_federation(cfg.data, cfg.seed).client(2)

    def ask(**extra):
        config = ConfigRecord({"experiment": cfg.to_json(), **extra})
        (reply,) = grid.send_and_receive([Message(RecordDict({"config": config}), dst_node_id=node,
                                                  message_type=MessageType.QUERY)])
        assert set(reply.content.keys()) == {"metrics"}  # no data leaves
        return reply.content["metrics"]

    metrics = ask()
    assert dict(metrics) == {"partition-id": 2, "num-examples": len(train), "num-test-examples": len(test)}
    metrics = ask(facts=["label-histogram"])
    assert list(metrics["label-histogram"]) == list(np.bincount(train.labels, minlength=10))


def test_federated_evaluation_on_local_test_splits(tiny_cfg, tmp_path):
    """Each client scores the round's global model on its own local test split: the last round's per-client
    accuracies are those of the final model on each client's split (skewed partitions: they differ by client)."""
    from fedgen.train import evaluate

    cfg = tiny_cfg(data={"partition": {"kind": "dirichlet", "alpha": 0.3}}, strategy={"fraction_evaluate": 1.0})
    grid = InProcessGrid(app, 3)
    run_experiment(grid, cfg, tmp_path / "ev")
    rows = [json.loads(line) for line in (tmp_path / "ev" / "rounds.jsonl").read_text().splitlines()]
    sent = [m for m in grid.delivered if m.metadata.message_type == MessageType.EVALUATE]
    assert len(sent) == 3 * cfg.rounds
    fed = load_federation(cfg.data, cfg.seed)
    model = build_model(cfg.model.name, fed.num_classes, cfg.model.norm)
    model.load_state_dict(torch.load(tmp_path / "ev" / "model.pt"))
    own = [evaluate(model, fed.client(k)[1], cfg.train.eval_batch_size, torch.device("cpu"),
                    len(fed.domain_names)).accuracy for k in range(3)]
    assert [rows[-1][f"fedeval/acc-client-{k}"] for k in range(3)] == own
    assert len(set(own)) == 3  # each split its own score: another client's split would not give it


def test_a_client_that_cannot_start_stops_the_run_with_a_clear_message(tiny_cfg, tmp_path):
    cfg = tiny_cfg(data={"num_clients": 4}, strategy={"min_train_clients": 2})
    grid = InProcessGrid(app, 4)
    bad_node = list(grid.get_node_ids())[0]
    grid.contexts[bad_node].node_config["partition-id"] = 99  # this client cannot find its data
    with pytest.raises(RuntimeError, match="1 client node.s. could not answer the partition query"):
        run_experiment(grid, cfg, tmp_path / "bad")
    summary = json.loads((tmp_path / "bad" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failures"][0]["client"] == -1
    assert "partition-id 99" in summary["failures"][0]["reason"]


def test_federated_evaluation_is_aggregated_by_client_and_domain_for_every_strategy(tiny_cfg, tmp_path):
    """Evaluation replies with a test split larger than the training split are accepted (each kind is checked
    against its own count); the aggregate names the overall, per-client and per-domain accuracy and nothing else."""
    cfg = tiny_cfg(rounds=1, data={"client_test_fraction": 0.6}, strategy={"name": "feddyn", "fraction_evaluate": 1.0})
    summary, rows, _ = _run(cfg, tmp_path)
    assert summary["failures"] == []
    fed = load_federation(cfg.data, cfg.seed)
    keys = {k for k in rows[1] if k.startswith("fedeval/")}
    assert keys == {"fedeval/acc", "fedeval/loss"} | {f"fedeval/acc-client-{k}" for k in range(3)} | {
        f"fedeval/acc-domain-{d}" for d in fed.domain_names}
    tests = [fed.client(k)[1] for k in range(3)]
    assert all(len(t) > len(fed.client(k)[0]) for k, t in enumerate(tests))
    weights = np.array([len(t) for t in tests])
    per_client = np.array([rows[1][f"fedeval/acc-client-{k}"] for k in range(3)])
    assert rows[1]["fedeval/acc"] == pytest.approx(np.average(per_client, weights=weights))


def test_two_nodes_with_one_partition_are_refused_naming_them(tiny_cfg, tmp_path):
    grid = InProcessGrid(app, 3)
    a, b, _ = grid.get_node_ids()
    grid.contexts[b].node_config["partition-id"] = 0  # a second node started for partition 0
    with pytest.raises(RuntimeError, match=rf"nodes ({a} and {b}|{b} and {a}) both hold partition 0"):
        run_experiment(grid, tiny_cfg(), tmp_path / "run")


def test_a_reply_cannot_speak_for_another_partition(tiny_cfg, tmp_path, monkeypatch):
    from clients import finetune

    original = finetune.evaluate

    def impostor(msg, context):
        reply = original(msg, context)
        if context.node_config["partition-id"] == 1:
            reply.content["metrics"]["partition-id"] = 2
        return reply

    monkeypatch.setattr(finetune, "evaluate", impostor)
    summary, rows, _ = _run(tiny_cfg(rounds=1, strategy={"fraction_evaluate": 1.0}), tmp_path)
    (failure,) = summary["failures"]
    assert failure["client"] == 1 and failure["kind"] == "evaluate"
    assert "metric 'metrics.partition-id'=2 but the node holds partition 1" in failure["reason"]
    assert "fedeval/acc-client-0" in rows[1] and "fedeval/acc-client-1" not in rows[1]


def test_feddyn_alpha_by_data_share_as_the_official_code(tiny_cfg, tmp_path, monkeypatch):
    """With feddyn_alpha_by_data_share, client k trains with alpha * mean(n) / n_k; without, with alpha."""
    from fedgen import feddyn

    used = []  # in the order Flower sampled the clients
    original = feddyn.client_penalty

    def spy(global_params, grads, alpha):
        used.append(alpha)
        return original(global_params, grads, alpha)

    monkeypatch.setattr(feddyn, "client_penalty", spy)
    part = {"kind": "dirichlet", "alpha": 0.3}
    cfg = tiny_cfg(rounds=1, data={"partition": part},
                   strategy={"name": "feddyn", "feddyn_alpha": 0.1, "feddyn_alpha_by_data_share": True})
    _run(cfg, tmp_path, "share")
    fed = load_federation(cfg.data, cfg.seed)
    sizes = np.array([len(fed.client(k)[0]) for k in range(3)])
    assert len(set(sizes)) == 3  # unequal shares, so the scaling shows
    assert sorted(used) == pytest.approx(sorted(0.1 * sizes.mean() / sizes))
    used.clear()
    _run(cfg.model_copy(update={"strategy": cfg.strategy.model_copy(update={"feddyn_alpha_by_data_share": False})}),
         tmp_path, "plain")
    assert used == [0.1, 0.1, 0.1]


def test_a_long_tailed_run_is_also_scored_on_its_tail_classes(tiny_cfg, tmp_path):
    from fedgen.tasks import tail_classes

    cfg = tiny_cfg(rounds=1, data={"partition": {"kind": "longtail", "imbalance_factor": 10}})
    summary, rows, _ = _run(cfg, tmp_path)
    fed = load_federation(cfg.data, cfg.seed)
    tail = tail_classes(fed.pooled_train().label_histogram(10))
    assert len(tail) == 3
    test = fed.test
    per_class = [rows[1][f"test/acc-class-{fed.class_names[c]}"] for c in tail]
    counts = [int((test.labels == c).sum()) for c in tail]
    assert rows[1]["test/acc-tail"] == pytest.approx(np.average(per_class, weights=counts))
