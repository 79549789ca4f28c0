"""SCAFFOLD, MOON and FedAdam/FedYogi: their math against hand-computed values, and what leaves a client."""

import copy
import math

import numpy as np
import pytest
import torch
from inprocess import InProcessGrid
from torch import nn

from fedgen import moon, scaffold
from fedgen.data.images import ImageSet
from fedgen.models import build_model
from fedgen.train import fit


# --- SCAFFOLD -----------------------------------------------------------------------------------------------------
def test_scaffold_client_control_update_is_option_ii():
    c_i, c = [torch.tensor([1.0, -1.0])], [torch.tensor([0.5, 0.5])]
    x, y = [torch.tensor([2.0, 2.0])], [torch.tensor([1.0, 3.0])]
    new, delta = scaffold.client_control_update(c_i, c, x, y, lr_sum=0.5)
    # c_i - c + (x - y) / (K lr) = (1, -1) - (0.5, 0.5) + (1, -1) / 0.5
    assert torch.allclose(new[0], torch.tensor([2.5, -3.5])) and torch.allclose(delta[0], torch.tensor([1.5, -2.5]))
    with pytest.raises(ValueError, match="at least one local step"):
        scaffold.client_control_update(c_i, c, x, y, lr_sum=0.0)


def test_scaffold_server_update_steps_the_model_and_the_control():
    x = {"w": torch.tensor([1.0, 2.0]), "bn": torch.tensor([0.0])}
    ys = [{"w": torch.tensor([2.0, 2.0]), "bn": torch.tensor([1.0])},
          {"w": torch.tensor([0.0, 4.0]), "bn": torch.tensor([3.0])}]
    dcs = [{"w": torch.tensor([1.0, 1.0])}, {"w": torch.tensor([3.0, -1.0])}]
    new, c = scaffold.server_update(x, ys, dcs, {"w": torch.zeros(2)}, eta_g=0.5, num_clients=4)
    # x + 0.5 * (mean y - x) = (1, 2) + 0.5 * (0, 1); c + (1/N) sum dc = (4, 0) / 4; buffers: the plain mean
    assert torch.allclose(new["w"], torch.tensor([1.0, 2.5])) and torch.allclose(c["w"], torch.tensor([1.0, 0.0]))
    assert torch.allclose(new["bn"], torch.tensor([2.0])) and "bn" not in c


def test_scaffold_correction_adds_c_minus_c_i_to_the_gradient():
    model = nn.Linear(2, 1, bias=False)
    scaffold.correction([torch.tensor([[1.0, 2.0]])], [torch.tensor([[0.5, -1.0]])])(model).backward()
    assert torch.allclose(model.weight.grad, torch.tensor([[0.5, 3.0]]))


class _Linear(nn.Module):
    """A model whose only gradient is a penalty's: a constant gradient, the case option II recovers exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))

    def forward(self, x):
        return torch.zeros(len(x), 10) + 0 * self.w.sum()


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_option_ii_recovers_a_constant_gradient_with_and_without_momentum(momentum):
    """(x - y) / (K lr) is the gradient when it is constant: the lr_sum local training reports makes it so for SGD
    with momentum too (step k moves lr (1 - beta^k) / (1 - beta))."""
    g = torch.tensor([1.0, -2.0, 0.5])
    data = ImageSet(np.zeros((40, 8, 8, 3), np.uint8), np.arange(40) % 10, np.zeros(40, np.int64))
    model = _Linear()
    result = fit(model, data, epochs=2, batch_size=8, lr=0.05, momentum=momentum, weight_decay=0.0,
                 device=torch.device("cpu"), seed=0, penalties=[lambda m: (g * m.w).sum()])
    assert result.steps == 10
    new, _ = scaffold.client_control_update([torch.zeros(3)], [torch.zeros(3)], [torch.zeros(3)],
                                            [model.w.detach()], result.lr_sum)
    assert torch.allclose(new[0], g, atol=1e-5)


def test_scaffold_traffic_is_twice_fedavgs_and_the_client_control_stays_home(tiny_cfg, tmp_path):
    """Each way, a SCAFFOLD message carries the model and one control variate per trainable parameter; the client's
    own c_i is on its disk and never in a reply."""
    from clients.app import app
    from simulations.server_app import run_experiment

    runs = {}
    for name in ("fedavg", "scaffold"):
        grid = InProcessGrid(app, 3)
        summary = run_experiment(grid, tiny_cfg(rounds=1, strategy={"name": name}), tmp_path / name)
        runs[name] = grid, summary
    grid, _ = runs["scaffold"]
    params = {k for k, _ in build_model("cnn", 10).named_parameters()}
    train = [m for m in grid.delivered if m.metadata.message_type == "train"]
    assert len(train) == 3
    replies = [r for r in grid.received if r.metadata.message_type == "train"]
    for msg in train + replies:
        state, control = scaffold.split(msg.content["arrays"].to_torch_state_dict())
        assert set(control) == params and set(state) == set(build_model("cnn", 10).state_dict())
    assert all(set(r.content.array_records) == {"arrays"} and set(r.content.metric_records) == {"metrics"} and
               set(r.content["metrics"].keys()) == {"train-loss", "num-examples"} for r in replies)
    s_avg, s_scaf = runs["fedavg"][1], runs["scaffold"][1]
    query = {d: sum(e["bytes"] for e in json_lines(tmp_path / "fedavg") if e["round"] == 0 and e["direction"] == d)
             for d in ("up", "down")}
    param_bytes = sum(build_model("cnn", 10).get_parameter(k).numel() * 4 for k in params)
    for d in ("up", "down"):
        assert s_scaf[f"bytes_{d}"] - s_avg[f"bytes_{d}"] == pytest.approx(3 * param_bytes, rel=0.01)
        assert (s_scaf[f"bytes_{d}"] - query[d]) / (s_avg[f"bytes_{d}"] - query[d]) == pytest.approx(2, rel=0.02)
    saved = list((tmp_path / "scaffold" / "client_state").glob("scaffold-control-p*-r1.pt"))
    assert len(saved) == 3


def json_lines(run):
    import csv

    with open(run / "bytes.csv") as f:
        return [{**e, "round": int(e["round"]), "bytes": int(e["bytes"])} for e in csv.DictReader(f)]


# --- MOON ---------------------------------------------------------------------------------------------------------
def test_moon_contrastive_loss_on_two_tiny_batches():
    z = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    z_glob = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    z_prev = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    # example 1: sims (1, 0) / 0.5 -> -log(e^2 / (e^2 + e^0)); example 2: sims (1/sqrt 2, 1) / 0.5
    want = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(2 - math.sqrt(2)))) / 2
    assert moon.contrastive_loss(z, z_glob, z_prev, tau=0.5).item() == pytest.approx(want, rel=1e-6)
    # the first batch alone, and a representation with trailing dimensions (a U-Net mid block) is flattened
    assert moon.contrastive_loss(z[:1, :, None], z_glob[:1, :, None], z_prev[:1, :, None], 0.5).item() == \
        pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)


def test_moon_representation_is_the_named_layer():
    x = torch.randn(4, 3, 32, 32)
    cnn = build_model("cnn", 10)
    assert moon.representation(cnn, x).shape == (4, 64)
    assert torch.equal(moon.representation(cnn, x), cnn.classifier[:3](cnn.features(x)))
    assert moon.representation(build_model("resnet18", 10), x).shape == (4, 512, 1, 1)
    with pytest.raises(ValueError, match="representation"):
        moon.representation(nn.Linear(2, 2), torch.zeros(1, 2))


def test_moon_penalty_uses_the_training_forward_pass_and_trains_only_the_local_model():
    torch.manual_seed(0)
    local = build_model("cnn", 10)
    glob, prev = copy.deepcopy(local), copy.deepcopy(local)
    for p in prev.parameters():  # a previous model that differs
        p.data.add_(0.1 * torch.randn_like(p))
    contrast = moon.ModelContrast(local, glob, prev, mu=2.0, tau=0.5)
    x = torch.randn(5, 3, 32, 32)
    want = 2.0 * moon.contrastive_loss(moon.representation(local, x), moon.representation(glob, x),
                                       moon.representation(prev, x), 0.5)
    local(x)
    value = contrast(local)
    assert value.item() == pytest.approx(want.item(), rel=1e-5)
    value.backward()
    assert local.classifier[1].weight.grad is not None and local.classifier[3].weight.grad is None
    assert all(p.grad is None for m in (glob, prev) for p in m.parameters())
    contrast.close()
    local(x)
    with pytest.raises(RuntimeError, match="after the model's forward pass"):
        contrast(local)  # closed: the forward pass is no longer caught
    # with the previous model equal to the global one, each example's loss is log 2
    same = moon.ModelContrast(local, glob, copy.deepcopy(glob), mu=1.0, tau=0.5)
    glob.load_state_dict(local.state_dict())
    local(x)
    assert same(local).item() == pytest.approx(math.log(2), rel=1e-5)


def test_moon_sends_the_model_alone_and_keeps_the_previous_one_on_the_client(tiny_cfg, tmp_path):
    from clients.app import app
    from fedgen.wire import MOON_MU, MOON_TAU, NUM_EXAMPLES, TRAIN_LOSS
    from simulations.server_app import run_experiment

    grid = InProcessGrid(app, 3)
    cfg = tiny_cfg(rounds=2, strategy={"name": "moon", "moon_mu": 5.0})
    assert run_experiment(grid, cfg, tmp_path / "run")["final_accuracy"] > 0.5
    sent = [m for m in grid.delivered if m.metadata.message_type == "train"]
    assert all((m.content["config"][MOON_MU], m.content["config"][MOON_TAU]) == (5.0, 0.5) for m in sent)
    replies = [r for r in grid.received if r.metadata.message_type == "train"]
    assert len(replies) == 6
    for r in replies:
        assert set(r.content.array_records) == {"arrays"} and set(r.content.metric_records) == {"metrics"}
        assert set(r.content["arrays"].keys()) == set(build_model("cnn", 10).state_dict())
        assert set(r.content["metrics"].keys()) == {TRAIN_LOSS, NUM_EXAMPLES}
    # round 2 read round 1's previous models (the last aggregated); each client keeps that and its newest
    assert sorted(p.name for p in (tmp_path / "run" / "client_state").iterdir()) == sorted(
        f"moon-previous-p{k}-r{r}.pt" for k in range(3) for r in (1, 2))
