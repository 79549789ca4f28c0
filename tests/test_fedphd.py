"""FedPhD: homogeneity, edge selection and cloud weights against hand-computed values; structured pruning and its
plan; the hierarchy's rounds, tiers and bytes; resuming inside an edge period; under Ray."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from inprocess import InProcessGrid
from test_faults import _interrupted_in_round_2
from test_registry import EXPECTED_KEYS

from clients.app import app
from fedgen import fedphd
from fedgen.averaging import average
from fedgen.comm import CLIENT_EDGE, DOWN, EDGE_CLOUD, UP, ByteLedger
from fedgen.config import ConfigError, DiffusionConfig
from fedgen.diffusion import build_unet, pruning
from fedgen.wire import LABEL_HISTOGRAM, NUM_EXAMPLES
from simulations.grid import AccountedGrid
from simulations.server_app import run_experiment
from strategies.fedphd import FEDPHD_TRAIN, PRUNING_PLAN, SPARSE_LAMBDA, FedPhDConfig
from strategies.fedphd.strategy import FedPhD

U10 = np.full(10, 0.1)
ONE = np.eye(10)[0]  # every example of class 0
TWO = np.r_[0.5, 0.5, np.zeros(8)]  # classes 0 and 1, half each


# --- the math ---------------------------------------------------------------------------------------------------
def test_homogeneity_against_hand_computed_values():
    assert fedphd.homogeneity(U10, U10) == 2.0
    # one class: ||e_0 - u||_2 = sqrt(0.9^2 + 9 * 0.1^2) = sqrt(0.9); L1: 0.9 + 9 * 0.1 = 1.8
    assert fedphd.homogeneity(ONE, U10) == pytest.approx(2 - math.sqrt(0.9))
    assert fedphd.homogeneity(ONE, U10, "l1") == pytest.approx(0.2)
    # two classes: sqrt(2 * 0.4^2 + 8 * 0.1^2) = sqrt(0.4); L1: 0.8 + 0.8 = 1.6
    assert fedphd.homogeneity(TWO, U10) == pytest.approx(2 - math.sqrt(0.4))
    assert fedphd.homogeneity(TWO, U10, "l1") == pytest.approx(0.4)
    # against a skewed target, its own distribution is the most homogeneous
    assert fedphd.homogeneity(TWO, TWO) == 2.0 > fedphd.homogeneity(U10, TWO)
    with pytest.raises(ValueError, match="shape"):
        fedphd.homogeneity(np.ones(3) / 3, U10)


def test_merge_is_sample_weighted():
    q, n = fedphd.merge(U10, 0, 100 * ONE)  # an empty edge takes the client's distribution
    assert np.allclose(q, ONE) and n == 100
    q, n = fedphd.merge(ONE, 100, np.r_[0, 300, np.zeros(8)])
    assert np.allclose(q, np.r_[0.25, 0.75, np.zeros(8)]) and n == 400


def test_selection_probabilities_against_hand_computed_values():
    # edge 0 empty (uniform, 0 examples), edge 1 holds 100 examples of class 0; the client 100 of class 1
    client = np.r_[0, 100, np.zeros(8)]
    p = fedphd.selection_probabilities([U10, ONE], [0, 100], client, U10, a=10000)
    s0 = 10000 * (2 - math.sqrt(0.9)) - 0  # merged with the empty edge: the client's own, one class
    s1 = 10000 * (2 - math.sqrt(0.4)) - 100  # merged with edge 1: two classes, half each
    assert p == pytest.approx(np.array([s0, s1]) / (s0 + s1))
    assert p[1] > p[0]  # the edge the client makes more homogeneous, despite its load
    # a loaded edge whose score falls below zero is clipped to the 1e-8 floor
    p = fedphd.selection_probabilities([U10, ONE], [0, 1e6], client, U10, a=1)
    assert p[1] == pytest.approx(1e-8 / (2 - math.sqrt(0.9) + 1e-8 + 1e-8)) and p.sum() == pytest.approx(1)
    p = fedphd.selection_probabilities([U10, U10], [0, 0], client, U10, a=10000)  # two empty edges: a coin
    assert p == pytest.approx([0.5, 0.5])


def test_cloud_weights_against_hand_computed_values():
    rho = fedphd.cloud_weights([400, 1200], [TWO, U10], U10, a=5000)
    raw = np.array([400 + 5000 * (2 - math.sqrt(0.4)), 1200 + 5000 * 2])
    assert rho == pytest.approx(raw / raw.sum())
    rho = fedphd.cloud_weights([400, 1200], [TWO, U10], U10, a=0, b=-500)  # ReLU: edge 0's weight is 0
    assert list(rho) == [0.0, 1.0]
    with pytest.raises(ValueError, match="zero"):
        fedphd.cloud_weights([1, 1], [TWO, U10], U10, a=0, b=-5)


def test_weighted_average_and_sparse_penalty():
    a = {"w": torch.tensor([0.0, 4.0]), "n": torch.tensor(2)}
    b = {"w": torch.tensor([4.0, 0.0]), "n": torch.tensor(7)}
    out = average([a, b], [3, 1])  # the state-dict average FedPhD shares with FedDF
    assert torch.allclose(out["w"], torch.tensor([1.0, 3.0])) and out["n"].dtype == torch.int64 and out["n"] == 3
    layer = torch.nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))
        layer.bias.fill_(100.0)  # biases are not weights: not in the term
    assert fedphd.sparse_penalty(0.5)(layer).item() == pytest.approx(0.5 * 5.0)


# --- pruning ----------------------------------------------------------------------------------------------------
def test_pruning_the_papers_unet_matches_its_reported_size():
    """The paper: 35.7M -> 20.3M parameters, 6.1G -> 3.4G MACs at ratio 0.2 (the attention's inner width, kept
    whole here, accounts for the rest)."""
    unet = build_unet(DiffusionConfig(unet="paper"), 10, 32)
    macs, params = pruning.size(unet)
    pruning.prune(unet, 0.2)
    macs_pruned, params_pruned = pruning.size(unet)
    assert params == pytest.approx(35.7e6, rel=0.01) and macs == pytest.approx(6.1e9, rel=0.01)
    assert 0.40 < 1 - params_pruned / params < 0.45 and 0.40 < 1 - macs_pruned / macs < 0.45


def test_pruning_keeps_the_interface_and_a_plan_rebuilds_it():
    torch.manual_seed(0)
    unet = build_unet(DiffusionConfig(unet="digits"), 10, 16)
    fresh = build_unet(DiffusionConfig(unet="digits"), 10, 16)
    x, t, y = torch.randn(3, 3, 16, 16), torch.tensor([0, 10, 999]), torch.tensor([1, 5, 9])
    widths = {n: m.num_channels for n, m in unet.named_modules() if isinstance(m, torch.nn.GroupNorm)}
    plan = json.loads(json.dumps(pruning.prune(unet, 0.2)))  # as it travels in a message
    assert unet(x, t, class_labels=y).sample.shape == (3, 3, 16, 16)
    assert unet.conv_out.out_channels == 3  # RGB out; the class embedding and the attention width whole
    assert unet.class_embedding.weight.shape == fresh.class_embedding.weight.shape
    attn = [m for m in unet.modules() if hasattr(m, "to_q")]
    assert attn and all(a.to_q.out_features == f.to_q.out_features
                        for a, f in zip(attn, [m for m in fresh.modules() if hasattr(m, "to_q")], strict=True))
    for name, m in unet.named_modules():  # every GroupNorm lost channels, as many from each of its groups
        if isinstance(m, torch.nn.GroupNorm):
            assert m.num_channels < widths[name] and m.num_channels % m.num_groups == 0
    rebuilt = pruning.apply_plan(fresh, plan)
    rebuilt.load_state_dict(unet.state_dict())  # strict: every shape as pruned
    assert torch.allclose(rebuilt(x, t, class_labels=y).sample, unet(x, t, class_labels=y).sample, atol=1e-6)
    with pytest.raises(ValueError, match="ratio"):
        pruning.prune(fresh, 1.0)


# --- the strategy, round by round -------------------------------------------------------------------------------
def fake_grid(histograms) -> AccountedGrid:
    """Nodes holding partitions 0..n-1, with the label histograms the partition query would have learnt."""
    grid = AccountedGrid(InProcessGrid(app, len(histograms)), ByteLedger())
    grid.partition_of = {node: pid for pid, node in enumerate(sorted(grid.inner.get_node_ids()))}
    grid.facts = {pid: MetricRecord({LABEL_HISTOGRAM: [int(v) for v in h]}) for pid, h in enumerate(histograms)}
    return grid


def _reply(msg: Message, value: float, n: int) -> Message:
    arrays = {k: torch.full_like(v, value) for k, v in msg.content["arrays"].to_torch_state_dict().items()}
    return Message(RecordDict({"arrays": ArrayRecord(arrays),
                               "metrics": MetricRecord({NUM_EXAMPLES: n, "train-loss": 0.5})}), reply_to=msg)


def test_a_round_assigns_edges_in_partition_order_and_aggregates_edges_then_the_cloud():
    ten = np.eye(10) * 100
    grid = fake_grid([ten[0], ten[1], ten[0] + ten[1], ten[2]])
    settings = FedPhDConfig(num_edges=2, cloud_every=2, prune="none")
    ledger = ByteLedger()
    strategy = FedPhD(settings, 10, lambda: torch.nn.Linear(2, 1), ledger, seed=3, message_type=FEDPHD_TRAIN,
                      fraction_train=1.0, min_train_nodes=4, min_available_nodes=4)
    start = ArrayRecord({"weight": torch.zeros(1, 2), "bias": torch.zeros(1)})
    messages = list(strategy.configure_train(1, start, ConfigRecord(), grid))
    assert [grid.partition(m.metadata.dst_node_id) for m in messages] == [0, 1, 2, 3]
    assert {m.metadata.message_type for m in messages} == {FEDPHD_TRAIN}
    assert all(PRUNING_PLAN not in m.content["config"] and SPARSE_LAMBDA not in m.content["config"] for m in messages)
    # the same draws by hand: clients in partition order, each merged into the edge it drew
    rng, qs, ns, picks = np.random.default_rng([3, 1]), [U10, U10], [0.0, 0.0], []
    for h in (ten[0], ten[1], ten[0] + ten[1], ten[2]):
        e = int(rng.choice(2, p=fedphd.selection_probabilities(qs, ns, h, U10, 10000)))
        qs[e], ns[e] = fedphd.merge(qs[e], ns[e], h)
        picks.append(e)
    assert [strategy.assignment[m.metadata.dst_node_id] for m in messages] == picks
    assert [e.n for e in strategy.edges] == ns and all(np.allclose(e.q, q) for e, q in zip(strategy.edges, qs,
                                                                                              strict=True))
    values, counts = [1.0, 2.0, 4.0, 8.0], [100, 100, 200, 100]
    arrays, metrics = strategy.aggregate_train(1, [_reply(m, v, n) for m, v, n in zip(messages, values, counts,
                                                                                       strict=True)])
    assert arrays is None  # round 1 is not a cloud round: edges only
    edge_value = {}
    for e in (0, 1):
        mine = [(v, n) for v, n, p in zip(values, counts, picks, strict=True) if p == e]
        assert metrics[f"edge{e}-clients"] == len(mine)
        if mine:
            edge_value[e] = sum(v * n for v, n in mine) / sum(n for _, n in mine)
            assert torch.allclose(strategy.edges[e].model["weight"], torch.full((1, 2), edge_value[e]))
            assert strategy.edges[e].last_n == sum(n for _, n in mine)
    assert ledger.total(UP, tier=EDGE_CLOUD) == 0
    # round 2, a cloud round: rho from the edges' last counts and distributions; every edge takes the global model
    messages = list(strategy.configure_train(2, start, ConfigRecord(), grid))
    for m in messages:  # each client trained from its edge's model
        e = strategy.assignment[m.metadata.dst_node_id]
        sent = m.content["arrays"].to_torch_state_dict()["weight"]
        assert torch.allclose(sent, torch.full((1, 2), edge_value.get(e, 0.0)))  # not the cloud's 'start'
    last = [e.last_n for e in strategy.edges]
    arrays, metrics = strategy.aggregate_train(2, [_reply(m, 1.0 + p, 100) for p, m in enumerate(messages)])
    edge_models = {}
    for e in (0, 1):
        mine = [1.0 + p for p, m in enumerate(messages) if strategy.assignment[m.metadata.dst_node_id] == e]
        edge_models[e] = np.mean(mine) if mine else edge_value.get(e, 0.0)
        if mine:
            last[e] = 100.0 * len(mine)
    qs = [e.q for e in strategy.edges]
    assert all(np.allclose(q, U10) for q in qs) and [e.n for e in strategy.edges] == [0.0, 0.0]  # reset
    assert [e.last_n for e in strategy.edges] == last  # kept
    rho = np.array([metrics["edge0-rho"], metrics["edge1-rho"]])
    assert rho.sum() == pytest.approx(1.0)
    expected = sum(rho[e] * edge_models[e] for e in (0, 1))
    assert torch.allclose(arrays.to_torch_state_dict()["weight"], torch.full((1, 2), expected, dtype=torch.float32))
    assert all(torch.equal(e.model["weight"], arrays.to_torch_state_dict()["weight"]) for e in strategy.edges)
    model_bytes = ArrayRecord(strategy.edges[0].model).count_bytes()
    assert ledger.total(UP, tier=EDGE_CLOUD) == ledger.total(DOWN, tier=EDGE_CLOUD) == 2 * model_bytes


def test_the_global_target_is_the_federations_label_distribution():
    grid = fake_grid([np.r_[300, 0, np.zeros(8)], np.r_[0, 100, np.zeros(8)]])
    strategy = FedPhD(FedPhDConfig(homogeneity_target="global", prune="none"), 10, lambda: torch.nn.Linear(2, 1),
                      ByteLedger(), 0, FEDPHD_TRAIN, min_train_nodes=2, min_available_nodes=2)
    strategy.configure_train(1, ArrayRecord({"b": torch.zeros(1)}), ConfigRecord(), grid)
    assert np.allclose(strategy.target, np.r_[0.75, 0.25, np.zeros(8)])


# --- configuration ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"rounds": 7}, "multiple of strategy.cloud_every"),
    ({"evaluation": {"every": 3}}, "evaluation.every=3"),
    ({"strategy": {"sparse_rounds": 3}}, "sparse_rounds=3"),
    ({"strategy": {"sparse_rounds": 10}}, "sparse_rounds=10"),
    ({"task": "classify"}, "does not run task=classify"),
])
def test_bad_fedphd_configs_fail_naming_the_key(tiny_cfg, change, message):
    base = dict(task="diffusion", rounds=10, strategy={"name": "fedphd", "cloud_every": 5, "sparse_rounds": 5},
                evaluation={"every": 5})
    for key, value in change.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError, match=message):
        tiny_cfg(**base)


# --- whole runs -------------------------------------------------------------------------------------------------
def _cfg(tiny_cfg, tmp_path, every=2, rounds=4, **strategy):
    return tiny_cfg(task="diffusion", rounds=rounds, data={"num_clients": 6, "partition": {"kind": "classes",
                                                                                     "classes_per_client": 2}},
                    strategy={"name": "fedphd", "fraction_train": 0.5, "cloud_every": 2, "sparse_rounds": 2,
                              **strategy},
                    diffusion={"unet": "tiny", "image_size": 16, "batch_size": 64},
                    evaluation={"samples_per_class": 2, "sampling_steps": 2, "every": every, "reference_epochs": 1,
                                "cache_dir": str(tmp_path / "ref")})


def test_a_hierarchical_run_prunes_after_sparse_training_and_counts_each_tier(tiny_cfg, tmp_path):
    grid = InProcessGrid(app, 6)
    summary = run_experiment(grid, _cfg(tiny_cfg, tmp_path), tmp_path / "run")
    kinds = {m.metadata.message_id: m.metadata.message_type for m in grid.delivered}
    seen: dict[str, set] = {}
    for reply in grid.received:  # only what the method needs leaves a client: its label histogram and the model
        seen.setdefault(kinds[reply.metadata.reply_to_message_id], set()).update(reply.content["metrics"].keys())
    assert seen == EXPECTED_KEYS["fedphd"]
    train = [m for m in grid.delivered if m.metadata.message_type == FEDPHD_TRAIN]
    by_round = {}
    for m in train:
        by_round.setdefault(int(m.content["config"]["server-round"]), []).append(m)
    assert sorted(by_round) == [1, 2, 3, 4] and all(len(ms) == 3 for ms in by_round.values())
    for rnd, ms in by_round.items():  # sparse training up to R_s = 2, then the pruned architecture's plan
        assert all((SPARSE_LAMBDA in m.content["config"]) == (rnd <= 2) for m in ms)
        assert all((PRUNING_PLAN in m.content["config"]) == (rnd > 2) for m in ms)
    full, pruned = (sum(a.numel() for a in by_round[r][0].content["arrays"].to_torch_state_dict().values())
                    for r in (1, 3))
    assert pruned / full == pytest.approx(summary["fedphd"]["params-pruned"] / summary["fedphd"]["params"])
    assert pruned < 0.7 * full
    rows = [json.loads(line) for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    fid = summary["metric"]["name"]
    assert [r[fid] is None for r in rows] == [False, True, False, True, False]  # the cloud rounds are scored
    assert [("train/edge0-rho" in r) for r in rows] == [False, False, True, False, True]
    with open(tmp_path / "run" / "bytes.csv") as f:
        entries = list(csv.DictReader(f))
    assert {e["tier"] for e in entries} == {CLIENT_EDGE, EDGE_CLOUD}  # nothing reached the cloud from a client
    cloud_rounds = {int(e["round"]) for e in entries if e["tier"] == EDGE_CLOUD}
    assert cloud_rounds == {2, 4}
    tiers = summary["bytes_by_tier"]
    assert tiers[CLIENT_EDGE]["up"] > tiers[EDGE_CLOUD]["up"] > 0 and tiers["client-server"] == {"up": 0, "down": 0}
    assert summary["bytes_up"] == tiers[CLIENT_EDGE]["up"] + tiers[EDGE_CLOUD]["up"]
    assert summary["fedphd"]["macs-pruned"] < summary["fedphd"]["macs"]

    from fedgen.report import write_report

    md = write_report(tmp_path, "t", {"FedPhD": {0: tmp_path / "run"}}, "here")
    assert "| MB client-edge down | MB client-edge up | MB edge-cloud down | MB edge-cloud up | MB long-haul |" in md
    long_haul = (tiers[EDGE_CLOUD]["up"] + tiers[EDGE_CLOUD]["down"]) / 1e6
    assert f"| {long_haul:.2f} |" in md


def test_resume_inside_an_edge_period_continues_exactly(tiny_cfg, tmp_path, monkeypatch):
    """Interrupted in round 2 of a 3-round edge period (the edges' models and statistics, the pruned plan, live on
    the server): the resumed run ends where the whole one did."""
    cfg = _cfg(tiny_cfg, tmp_path, every=3, rounds=3, cloud_every=3, prune="start").model_copy(
        update={"deterministic": True})
    whole = run_experiment(InProcessGrid(app, 6), cfg, tmp_path / "whole")
    _interrupted_in_round_2("fedphd", cfg, tmp_path / "broke", monkeypatch)
    resumed = run_experiment(InProcessGrid(app, 6, seed=9), cfg, tmp_path / "broke", resume=True)
    a, b = torch.load(tmp_path / "whole" / "unet.pt"), torch.load(tmp_path / "broke" / "unet.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["final"] == whole["final"] and resumed["fedphd"] == whole["fedphd"]
    assert (tmp_path / "broke" / "bytes.csv").read_text() == (tmp_path / "whole" / "bytes.csv").read_text()


@pytest.mark.integration
def test_fedphd_under_ray_with_per_tier_bytes(tmp_path, fedgen_run):
    out = tmp_path / "run"
    proc = fedgen_run("simulations/configs/fedphd_digits.yaml",
                      ["rounds=1", "data.num_clients=4", "strategy.name=fedphd", "strategy.cloud_every=1",
                       "strategy.prune=start", "strategy.fraction_train=0.5", "diffusion.unet=tiny",
                       "diffusion.batch_size=64", "diffusion.local_epochs=1", "evaluation.samples_per_class=2",
                       "evaluation.sampling_steps=2", "evaluation.every=1", "evaluation.reference_epochs=1",
                       f"evaluation.cache_dir={tmp_path / 'ref'}"], out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and not summary["failures"]
    tiers = summary["bytes_by_tier"]
    assert tiers[EDGE_CLOUD]["up"] > 0 and tiers[CLIENT_EDGE]["up"] > 0 and tiers["client-server"]["up"] == 0
    assert summary["fedphd"]["params-pruned"] < summary["fedphd"]["params"]  # pruned before round 1: the clients'
    # replies, checked against what was sent, came back pruned
    assert "Warning!" not in proc.stdout  # torch-pruning's notes stay off the console
