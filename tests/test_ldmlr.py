"""LDMLR: the feature diffusion's math against hand-computed values, the schedules' switches, the generation counts,
the bands, and tiny end-to-end runs (centralized, local, and FedAvg with what leaves a client)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from inprocess import InProcessGrid

from clients.app import app
from fedgen import ldmlr
from fedgen.config import ConfigError, LdmlrConfig
from fedgen.diffusion import features as fd
from fedgen.models import SmallCNN
from fedgen.wire import LDMLR_TRAIN
from simulations.server_app import run_experiment


@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
def test_z0_estimate_inverts_the_forward_process_given_the_true_prediction(prediction):
    scheduler = fd.feature_scheduler(LdmlrConfig(prediction=prediction))
    gen = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    t = torch.tensor([0, 10, 200, 500, 800, 950])
    z_t = scheduler.add_noise(z0, noise, t)
    abar = scheduler.alphas_cumprod[t][:, None]
    assert torch.allclose(z_t, abar.sqrt() * z0 + (1 - abar).sqrt() * noise, atol=1e-6)
    truth = noise if prediction == "epsilon" else z0
    assert torch.allclose(fd.z0_estimate(truth, z_t, t, scheduler), z0, atol=1e-3)


def test_the_loss_weighting_is_snr_for_x0_and_min_snr_clips_it():
    scheduler = fd.feature_scheduler(LdmlrConfig(prediction="sample"))
    z0, noise, t, y = torch.zeros(2, 4), torch.zeros(2, 4), torch.tensor([100, 900]), torch.tensor([0, 1])
    abar = scheduler.alphas_cumprod[t]
    snr = abar / (1 - abar)

    def ones(z_t, t, y):  # predicts 1 everywhere: squared error 1 per dimension
        return torch.ones_like(z_t)

    loss, z0_hat = fd.ldm_loss(ones, scheduler, z0, y, noise, t)
    assert loss.item() == pytest.approx(snr.mean().item(), rel=1e-5) and torch.equal(z0_hat, torch.ones(2, 4))
    clipped, _ = fd.ldm_loss(ones, scheduler, z0, y, noise, t, snr_gamma=5.0)
    assert clipped.item() == pytest.approx(snr.clamp(max=5).mean().item(), rel=1e-5)
    eps = fd.feature_scheduler(LdmlrConfig(prediction="epsilon"))
    plain, _ = fd.ldm_loss(ones, eps, z0, y, noise, t)
    assert plain.item() == pytest.approx(1.0)


def test_prototypes_follow_an_ema_with_a_lower_weight_for_pseudo_features():
    p = fd.Prototypes(num_classes=3, dim=2, momentum=0.5)
    p.update(torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 4.0]]), torch.tensor([0, 0, 1]))
    assert torch.equal(p.mean[0], torch.tensor([2.0, 0.0])) and torch.equal(p.mean[1], torch.tensor([0.0, 4.0]))
    assert p.seen.tolist() == [True, True, False] and p.seen_cov.tolist() == [True, False, False]
    assert torch.allclose(p.cov[0], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))  # population covariance of (1, 3)
    p.update(torch.tensor([[4.0, 0.0], [4.0, 2.0]]), torch.tensor([0, 0]))  # real: mu <- 0.5 mu + 0.5 (4, 1)
    assert torch.allclose(p.mean[0], torch.tensor([3.0, 0.5]))
    p.update(torch.tensor([[8.0, 0.5]]), torch.tensor([0]), weight=0.3)  # pseudo: step 0.15
    assert torch.allclose(p.mean[0], torch.tensor([3.0 + 0.15 * 5.0, 0.5]))
    assert torch.allclose(p.radius(2.0), 2.0 * torch.diagonal(p.cov, dim1=1, dim2=2).sum(1).sqrt())


def test_semantic_terms_against_hand_computed_values():
    z0_hat = torch.tensor([[1.0, 1.0], [3.0, 1.0], [0.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    mean = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    # squared distances 1, 1, 9 -> mean 11/3, / d = 2
    assert fd.proto_loss(z0_hat, y, mean).item() == pytest.approx(11 / 3 / 2)
    # distances 1, 1, 3 against radii 2, 2, 1 -> (1 + 1 + 4) / 3 / 2
    assert fd.rad_loss(z0_hat, y, mean, torch.tensor([2.0, 1.0])).item() == pytest.approx(1.0)
    # class 0's covariance is [[1, 0], [0, 0]]; against the identity: ||[[0, 0], [0, -1]]||_F = 1; class 1 has one
    # example (skipped)
    cov = torch.eye(2).repeat(2, 1, 1)
    assert fd.cov_loss(z0_hat, y, cov, torch.tensor([True, True])).item() == pytest.approx(0.5)
    assert fd.cov_loss(z0_hat, y, cov, torch.tensor([False, True])).item() == 0.0


def test_generation_counts():
    counts = torch.tensor([559, 54, 12, 10, 0])
    # official: max(round(0.2 n), 5); 0.2 * 12 = 2.4 -> 5; a class the data lacks gets none
    assert fd.generation_counts(counts, "proportional", 0.2, 5).tolist() == [112, 11, 5, 5, 0]
    assert fd.generation_counts(counts, "fill_tail", 0.2, 5).tolist() == [5, 505, 547, 549, 0]
    labels = ldmlr.pseudo_labels(torch.tensor([30, 0, 10]), LdmlrConfig(generate_min=2))
    assert labels.tolist() == [0] * 6 + [2] * 2


def test_the_schedules_switch_their_terms_at_the_configured_steps():
    a = LdmlrConfig(schedule="A", warmup_steps=4, lambda_sem=2.0, gamma_ge=1.0)
    assert [ldmlr.step_weights(a, s, 20).sem for s in (0, 1, 3, 10)] == [0.5, 1.0, 2.0, 2.0]
    assert ldmlr.step_weights(a, 0, 20).ge == 0.25 and ldmlr.step_weights(a, 0, 20).classifier
    b = LdmlrConfig(schedule="B", alternate=2)
    kinds = [(w.classifier, w.denoiser, w.sem > 0, w.ge > 0) for w in (ldmlr.step_weights(b, s, 9) for s in range(6))]
    diffusion, classifier = (False, True, True, False), (True, False, False, True)
    assert kinds == [diffusion, diffusion, classifier] * 2
    c = LdmlrConfig(schedule="C", phases=(0.3, 0.6), pseudo_ratio_start=0.1, pseudo_ratio=0.3)
    ws = [ldmlr.step_weights(c, s, 10) for s in range(10)]
    assert [w.sem > 0 for w in ws] == [False] * 3 + [True] * 7
    assert [w.ge > 0 for w in ws] == [False] * 6 + [True] * 4
    assert ws[6].ratio == pytest.approx(0.1) and ws[9].ratio == pytest.approx(0.3)


def test_bands_split_classes_by_training_frequency():
    counts = np.array([5, 100, 50, 7, 80, 20, 60, 9, 30, 40])
    assert ldmlr.bands(counts, (0.3, 0.3)) == {"many": [1, 4, 6], "medium": [2, 5, 8, 9], "few": [0, 3, 7]}


def test_the_frechet_distance_of_features():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 3, generator=gen)
    assert ldmlr.frechet(x, x) == pytest.approx(0.0, abs=1e-6)
    assert ldmlr.frechet(x, x + torch.tensor([3.0, 4.0, 0.0])) == pytest.approx(25.0, rel=1e-4)
    assert ldmlr.frechet(10 * x, 10 * x + torch.tensor([30.0, 40.0, 0.0]), ldmlr.spread(10 * x)) == pytest.approx(
        25.0 / ldmlr.spread(x) ** 2, rel=1e-4)  # scale-free: the same distance for features ten times larger


def test_the_denoisers_and_the_head_split():
    clf = SmallCNN(10)
    model = ldmlr.FeatureClassifier(clf, fd.build_feature_diffusion(LdmlrConfig(denoiser="unet1d", unet_dim=8),
                                                                    64, 10))
    x = torch.rand(3, 3, 32, 32)
    z, logits = model.features(x)
    assert z.shape == (3, 64) and torch.allclose(model.head(z), logits) and torch.allclose(model(x), logits)
    t, y = torch.tensor([0, 5, 999]), torch.tensor([1, 2, 3])
    assert model.diffusion(z, t, y).shape == (3, 64)
    assert fd.MLPDenoiser(64, 10, 32, 2)(z, t, y).shape == (3, 64)
    with pytest.raises(ValueError, match="must divide by 8"):
        fd.UNet1DDenoiser(60, 10, 8, [1, 2, 4, 8])


@pytest.mark.parametrize("change, message", [
    ({"method": "e2e", "prediction": "epsilon"}, "needs ldmlr.prediction=sample"),
    ({"bands": [0.5, 0.5]}, "must leave a medium band"),
    ({"phases": [0.6, 0.3]}, "phases must increase"),
    ({"schedule": "D"}, "ldmlr.schedule"),
])
def test_bad_ldmlr_configs_fail_naming_the_key(tiny_cfg, change, message):
    with pytest.raises(ConfigError, match=message):
        tiny_cfg(task="ldmlr", strategy={"name": "centralized"}, ldmlr=change)
    with pytest.raises(ConfigError, match="fraction_evaluate=0"):
        tiny_cfg(task="ldmlr", strategy={"name": "fedavg", "fraction_evaluate": 0.5})
    with pytest.raises(ConfigError, match="does not run task=ldmlr"):
        tiny_cfg(task="ldmlr", strategy={"name": "fedprox"})


def _cfg(tiny_cfg, strategy: str, **ldmlr_section):
    tiny = {"diffusion_epochs": 3, "head_epochs": 2, "sampling_steps": 3, "score_per_class": 4, "mlp_width": 32,
            "e2e_sampling_steps": 2, "sample_every": 2, "warmup_steps": 2, **ldmlr_section}
    return tiny_cfg(task="ldmlr", rounds=1, data={"partition": {"kind": "longtail", "imbalance_factor": 10}},
                    train={"local_epochs": 1}, strategy={"name": strategy}, ldmlr=tiny)


@pytest.mark.parametrize("method, schedule", [("ce", "A"), ("three_stage", "A"), ("e2e", "A"), ("e2e", "B"),
                                              ("e2e", "C")])
def test_a_centralized_run_on_tiny_settings(method, schedule, tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg, "centralized", method=method, schedule=schedule)
    summary = run_experiment(InProcessGrid(app, 3), cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    final = rows[-1]
    assert final["accuracy"] > 0.2  # well above chance (0.1) after one pass
    assert {"acc-many", "acc-medium", "acc-few"} <= final.keys()
    assert ("feat-fid-few" in final) == (method != "ce") and ("class-fidelity" in final) == (method != "ce")
    if method != "ce":
        assert math.isfinite(final["feat-fid-few"]) and 0 <= final["class-fidelity"] <= 1
    assert summary["bands"]["few"] == ["seven", "eight", "nine"]  # the long tail ends in label order
    state = torch.load(tmp_path / "run" / "model.pt")
    assert any(k.startswith("diffusion.denoiser.") for k in state)


def test_local_and_fedavg_runs_and_what_leaves_a_client(tiny_cfg, tmp_path):
    local = run_experiment(InProcessGrid(app, 3), _cfg(tiny_cfg, "local"), tmp_path / "local")
    assert local["final"] > 0.1
    grid = InProcessGrid(app, 3)
    run_experiment(grid, _cfg(tiny_cfg, "fedavg"), tmp_path / "fedavg")
    replies = [r for r in grid.received if r.content.metric_records]
    train = [m for m in grid.delivered if m.metadata.message_type == LDMLR_TRAIN]
    assert len(train) == 3
    for reply in replies:
        assert set(reply.content["metrics"].keys()) <= {"train-loss", "num-examples", "partition-id",
                                                          "num-test-examples"}
    trained = [r for r in replies if "train-loss" in r.content["metrics"]]
    assert len(trained) == 3
    for reply in trained:  # the two models' weights, and no feature or image
        keys = reply.content["arrays"].to_torch_state_dict().keys()
        assert all(k.startswith(("classifier.", "diffusion.")) for k in keys)
        assert any(k.startswith("diffusion.denoiser.") for k in keys)
