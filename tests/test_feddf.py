"""FedDF: its math against hand-computed values, the groups' traffic, a group whose clients all failed, labels of the
distillation data never read (a three-architecture federation on Ray: tests/test_e2e.py)."""

import json
import math

import numpy as np
import pytest
import torch
from inprocess import InProcessGrid
from torch import nn

from fedgen import feddf
from fedgen.averaging import average
from fedgen.config import ConfigError, ModelName, validate
from fedgen.models import MODELS, build_model
from fedgen.wire import MODEL_NAME
from strategies.feddf import FedDFConfig

FAST = {"max_steps": 20, "eval_every": 10, "patience": 10, "batch_size": 64}
"""A distillation budget for tests."""
THREE = ["cnn", "resnet8", "mobilenet"]


def _linear(weight, bias) -> nn.Module:
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return layer


class _Doubled(nn.Module):
    """Another architecture: twice a linear layer's logits."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return 2 * self.inner(x)


def test_the_teacher_averages_logits_across_architectures_then_softmax():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    a = _linear([[1, 0], [0, 1]], [0, 0])  # logits: x itself
    b = _Doubled(_linear([[0, 1], [1, 0]], [1, 0]))  # logits: 2 * (x1 + 1, x0)
    logits = feddf.ensemble_logits([a, b], x, batch_size=1, device=torch.device("cpu"))
    # row 0: a (1, 0), b (2, 2) -> (1.5, 1); row 1: a (0, 2), b (6, 0) -> (3, 1)
    assert torch.allclose(logits, torch.tensor([[1.5, 1.0], [3.0, 1.0]]))
    probs = feddf.soft_targets(logits, temperature=2.0)
    assert probs[0, 0].item() == pytest.approx(1 / (1 + math.exp(-0.25)))
    assert probs[1, 0].item() == pytest.approx(1 / (1 + math.exp(-1.0)))


def test_the_distillation_loss_is_batchmean_kl_without_t_squared():
    teacher = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    student = torch.tensor([[0.0, math.log(3)], [0.0, 0.0]])  # softmax: (1/4, 3/4) and (1/2, 1/2)
    row0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    row1 = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert feddf.distillation_loss(student, teacher, 1.0).item() == pytest.approx((row0 + row1) / 2)
    # T = 2 halves the student's logits; no T^2 factor
    row0_t2 = 0.5 * math.log(0.5 / (1 / (1 + math.sqrt(3)))) + 0.5 * math.log(0.5 / (math.sqrt(3) / (1 + math.sqrt(3))))
    assert feddf.distillation_loss(student[:1], teacher[:1], 2.0).item() == pytest.approx(row0_t2)


def test_early_stop_keeps_the_first_strict_best_and_waits_patience_steps():
    stop = feddf.EarlyStop(patience=300, higher_is_better=False)
    seen = [(0, 1.0, True), (100, 0.8, True), (200, 0.8, False), (300, 0.9, False), (400, 0.7, True),
            (500, 0.75, False), (600, 0.71, False)]
    for step, score, new in seen:
        assert stop.update(step, score) is new
        assert not stop.done(step)
    assert stop.best == 0.7 and stop.best_step == 400 and stop.done(700)
    up = feddf.EarlyStop(patience=100, higher_is_better=True)
    assert up.update(0, 0.5) and up.update(10, 0.6) and not up.update(20, 0.6) and up.done(110)


def test_distillation_returns_the_best_student_not_the_last_and_stops_after_patience():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, targets = torch.randn(40, 3, 2, 2), torch.softmax(torch.randn(40, 3), 1)
    scores = iter([5.0, 4.0, 1.0, 3.0, 2.0, 2.5, 9.0, 9.0])  # best (lower) at the second evaluation after step 0
    snapshots = []

    def score(model):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scores)

    settings = FedDFConfig(lr=0.1, batch_size=8, max_steps=1000, eval_every=5, patience=15)
    result = feddf.distill(student, x, targets, score, False, settings, torch.device("cpu"), seed=0)
    # evaluated at steps 0, 5, ..., 25: the best (1.0) at step 10; 15 steps later (step 25) it stops
    assert (result.best_step, result.steps, result.initial_score, result.best_score) == (10, 25, 5.0, 1.0)
    assert len(snapshots) == 6
    assert all(torch.equal(result.state[k], snapshots[2][k]) for k in result.state)
    assert not torch.equal(result.state["1.weight"], student.state_dict()["1.weight"])


def test_distillation_moves_the_student_towards_the_teacher():
    torch.manual_seed(0)
    student, teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x = torch.randn(200, 3, 2, 2)
    targets = feddf.soft_targets(feddf.ensemble_logits([teacher], x, 64, torch.device("cpu")), 1.0)
    score = feddf.kl_score(x[:40], targets[:40], 1.0, 64, torch.device("cpu"))
    settings = FedDFConfig(lr=0.05, batch_size=32, max_steps=200, eval_every=20, patience=100)
    result = feddf.distill(student, x, targets, score, False, settings, torch.device("cpu"), seed=1)
    assert result.best_score < 0.2 * result.initial_score


def test_architectures_go_to_contiguous_blocks_and_an_explicit_map_overrides():
    arch = feddf.assign_architectures(20, THREE, {}, "cnn")
    assert arch == ["cnn"] * 7 + ["resnet8"] * 7 + ["mobilenet"] * 6
    assert feddf.assign_architectures(4, [], {2: "resnet8"}, "cnn") == ["cnn", "cnn", "resnet8", "cnn"]


def test_students_start_from_the_uniform_or_weighted_average():
    a = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(2)}
    b = {"w": torch.tensor([4.0, 2.0]), "n": torch.tensor(5)}
    uniform = average([a, b])
    assert torch.equal(uniform["w"], torch.tensor([2.0, 2.0])) and uniform["n"].dtype == torch.int64
    assert uniform["n"].item() == 4  # 3.5, rounded half to even
    assert torch.equal(average([a, b], [3, 1])["w"], torch.tensor([1.0, 2.0]))
    groups = {"cnn": {"x": torch.ones(1)}, "resnet8": {"layer.y": torch.zeros(2)}}
    assert feddf.split(feddf.join(groups)) == groups


def test_the_model_registry_and_the_config_name_the_same_architectures():
    assert set(MODELS) == set(ModelName.__args__)
    for name, params in (("resnet8", 78_042), ("mobilenet", 700_490)):
        model = build_model(name, 10)
        assert sum(p.numel() for p in model.parameters()) == params
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_image_patches_are_seeded_uint8_crops():
    photos = [np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)]
    a, b = feddf.image_patches(photos, 5, 32, seed=3), feddf.image_patches(photos, 5, 32, seed=3)
    assert a.shape == (5, 32, 32, 3) and a.dtype == np.uint8 and np.array_equal(a, b)


@pytest.mark.parametrize("strategy, error", [
    ({"architectures": ["cnn", "vgg"]}, "strategy.architectures.1"),
    ({"architecture_of": {7: "cnn"}}, "strategy.architecture_of: partition ids [7] are outside 0..2"),
    ({"eval_every": 50, "max_steps": 10}, "strategy.eval_every=50 exceeds strategy.max_steps=10"),
    ({"architectures": THREE * 2}, "names 6 architectures for data.num_clients=3"),
])
def test_bad_feddf_settings_fail_before_any_work(strategy, error):
    with pytest.raises(ConfigError, match=error.replace("[", r"\[").replace("]", r"\]")):
        validate({"data": {"num_clients": 3}, "strategy": {"name": "feddf", **strategy}})


def _rows(run):
    return [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]


def test_each_client_gets_its_groups_model_and_a_group_whose_clients_all_failed_keeps_its_weights(
        tiny_cfg, tmp_path, monkeypatch):
    """Three architectures over three clients; resnet8's client always fails: its model stays as it was while the
    others are distilled from the two models that came back."""
    from clients import finetune
    from clients.app import app
    from simulations.server_app import run_experiment

    original = finetune.train

    def train(msg, context):
        if msg.content["config"][MODEL_NAME] == "resnet8":
            raise RuntimeError("this client's machine went away")
        return original(msg, context)

    monkeypatch.setattr(finetune, "train", train)
    grid = InProcessGrid(app, 3)
    cfg = tiny_cfg(strategy={"name": "feddf", "architectures": THREE, **FAST})
    summary = run_experiment(grid, cfg, tmp_path / "run")
    sent = [m for m in grid.delivered if m.metadata.message_type == "train"]
    by_pid = {grid.contexts[m.metadata.dst_node_id].node_config["partition-id"]: m for m in sent}
    for pid, arch in enumerate(THREE):
        for m in [m for k, m in by_pid.items() if k == pid]:
            assert m.content["config"][MODEL_NAME] == arch
            assert set(m.content["arrays"].keys()) == set(build_model(arch, 10).state_dict())
    rows = _rows(tmp_path / "run")
    assert rows[2]["accuracy-resnet8"] == rows[0]["accuracy-resnet8"]
    assert rows[2]["loss-resnet8"] == rows[0]["loss-resnet8"]
    assert all(rows[2][f"accuracy-{a}"] > rows[0][f"accuracy-{a}"] + 0.2 for a in ("cnn", "mobilenet"))
    assert "train/distill-steps-resnet8" not in rows[1] and rows[1]["train/distill-steps-cnn"] >= 10
    assert "ensemble-accuracy" not in rows[0] and 0.2 < rows[2]["ensemble-accuracy"] <= 1  # the two teachers
    assert summary["status"] == "finished" and len(summary["failures"]) == 2
    assert summary["feddf"] == {"architectures": THREE, "distillation": True, "source": "public", "early_stop": "kl"}
    final = torch.load(tmp_path / "run" / "model.pt")
    assert set(final) == set(THREE)


class _Unreadable(np.ndarray):
    """Labels that fail the test when anything reads them."""

    def _read(self, *args, **kwargs):
        raise AssertionError("the labels of the distillation data were read")

    __getitem__ = __iter__ = __array_function__ = __array_ufunc__ = astype = tolist = _read


def test_the_labels_of_the_distillation_data_are_never_read(tiny_cfg, tmp_path, monkeypatch):
    """The server's public split with labels that raise when read: a FedDF run distilling on it finishes."""
    import dataclasses

    import simulations.experiment as experiment
    from clients.app import app
    from fedgen.data import ImageSet, load_federation

    def trapped(cfg, seed):
        fed = load_federation(cfg, seed)
        return dataclasses.replace(fed, public=ImageSet(fed.public.images, fed.public.labels.view(_Unreadable),
                                                        fed.public.domains))

    monkeypatch.setattr(experiment, "load_federation", trapped)
    summary = run_experiment_in_process(app, tiny_cfg(rounds=1, strategy={"name": "feddf", **FAST}), tmp_path / "r")
    assert summary["status"] == "finished" and summary["final"] > 0.3


def test_the_official_stop_signal_reads_labels_of_a_held_out_tenth_only(tiny_cfg):
    from fedgen.data import load_federation
    from strategies.feddf import distillation_data

    cfg = tiny_cfg(strategy={"name": "feddf", "early_stop": "accuracy"})
    ctx = type("Ctx", (), {"cfg": cfg, "fed": load_federation(cfg.data, cfg.seed)})
    data = distillation_data(ctx)
    public = len(ctx.fed.public)
    assert len(data.holdout) == len(data.holdout_labels) == public // 10
    assert len(data.inputs) + len(data.holdout) == public
    seen = {tuple(x.flatten()[:64].tolist()) for x in data.inputs}
    assert not any(tuple(x.flatten()[:64].tolist()) in seen for x in data.holdout)


def test_scoring_the_groups_twice_gives_the_same_scores(tiny_cfg):
    """Evaluation reads the strategy's teachers, it does not take them: a second scoring of the same round is the
    first, the ensemble's accuracy included."""
    from fedgen.data import load_federation
    from strategies.feddf import GroupsTask

    cfg = tiny_cfg(strategy={"name": "feddf", "architectures": ["cnn"], **FAST})
    ctx = type("Ctx", (), {"cfg": cfg, "fed": load_federation(cfg.data, cfg.seed), "device": torch.device("cpu")})
    torch.manual_seed(0)
    teachers = [build_model("cnn", 10) for _ in range(2)]
    strategy = type("Strategy", (), {"teachers": teachers})()
    task = GroupsTask(ctx, strategy)
    state = feddf.join({"cnn": teachers[0].state_dict()})
    first = task.evaluate(1, state)
    assert "ensemble-accuracy" in first and task.evaluate(1, state) == first and strategy.teachers == teachers


def run_experiment_in_process(app, cfg, out):
    from simulations.server_app import run_experiment

    return run_experiment(InProcessGrid(app, cfg.data.num_clients), cfg, out)


def test_without_distillation_each_group_is_fedavg_inside_its_group(tiny_cfg, tmp_path):
    """distillation=false with the example-weighted average is the heterogeneous baseline; with one group it is
    FedAvg from the same start (up to float rounding: Flower averages in NumPy)."""
    from clients.app import app

    runs = {}
    for name, strategy in (("fedavg", {"name": "fedavg"}),
                           ("plain", {"name": "feddf", "distillation": False, "student_init": "weighted"})):
        runs[name] = run_experiment_in_process(app, tiny_cfg(rounds=1, strategy=strategy), tmp_path / name)
    assert runs["plain"]["final"] == pytest.approx(runs["fedavg"]["final"], abs=0.005)
    assert runs["plain"]["feddf"]["source"] is None
    assert _rows(tmp_path / "plain")[0]["accuracy"] == _rows(tmp_path / "fedavg")[0]["accuracy"]


@pytest.mark.parametrize("source", ["generated", "patches"])
def test_feddf_can_distil_on_generated_images_or_unrelated_photo_patches(source, tiny_cfg, tiny_models):
    """The inputs the server distils on (the rest of a round is the same whatever they are)."""
    from fedgen.data import load_federation
    from strategies.feddf import distillation_data

    foundation = {"profile": "pretrained", "generator": {"path": str(tiny_models / "sd"), "steps": 2, "size": 32,
                                                         "batch_size": 50}}
    cfg = tiny_cfg(rounds=1, foundation=foundation,
                   strategy={"name": "feddf", "source": source, "source_size": 30, "prompt": "a digit {c}", **FAST})
    ctx = type("Ctx", (), {"cfg": cfg, "fed": load_federation(cfg.data, cfg.seed), "device": torch.device("cpu")})
    data = distillation_data(ctx)
    assert (len(data.inputs), len(data.holdout), data.holdout_labels) == (27, 3, None)
    assert data.inputs.shape[1:] == (3, 32, 32) and -1 <= data.inputs.min() < data.inputs.max() <= 1
    assert data.inputs.std() > 0.05  # images, not a constant
