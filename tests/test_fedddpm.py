"""Private federated feature diffusion: dp-promise's accountant against its published settings, which timesteps get
DP, empty Poisson batches, the budget cap, what leaves a client, FedDDPM's variants, and a run on Ray."""

from __future__ import annotations

import json
import math

import pytest
import torch
from inprocess import InProcessGrid

from clients import dp_ledger
from clients.app import app
from fedgen import fedddpm
from fedgen.config import ConfigError, DpConfig, LdmlrConfig
from fedgen.data import load_federation
from fedgen.diffusion import features as fd
from fedgen.privacy import accountant, dp_diffusion, gdp
from simulations import audit
from simulations.server_app import run_experiment
from strategies.fedddpm import DPDIFFUSION_TRAIN

CIFAR10 = [  # dp-promise's configs/dp_promise/cifar10_32: (epochs1, S, sigma) -> its epsilon at delta 1e-5
    ((3, 900, 1.19), 10.000),
    ((3, 900, 1.94), 4.925),
    ((2, 925, 7.89), 1.000),
]


@pytest.mark.parametrize("setting, published", CIFAR10)
def test_the_accountant_reproduces_dp_promise_cifar10_settings(setting, published):
    epochs1, s, sigma = setting
    n, dim = 50_000, 3 * 32 * 32  # batch 32 for phase I, 4096 for phase II (50 epochs): the official loaders' counts
    per1, per2 = math.ceil(n / 32), math.ceil(n / 4096)
    scheduler = fd.feature_scheduler(LdmlrConfig(beta_schedule="linear"))  # betas 1e-4 .. 0.02, as dp-promise's
    abar = accountant.abar_at(scheduler, s)
    mu = math.hypot(gdp.phase1_mu(1 / per1, epochs1 * per1, dim, abar), gdp.phase2_mu(1 / per2, 50 * per2, sigma))
    assert gdp.epsilon_of(mu, 1e-5) == pytest.approx(published, abs=5e-4)
    assert gdp.epsilon_of(mu, 1e-5) <= published + 5e-4  # each setting keeps its target (10, 5, 1)
    # the same through the client's plan, which counts steps and rates the same way
    plan = accountant.plan(n, DpConfig(sigma=sigma, split_step=s, epochs1=epochs1, epochs2=50, batch_size1=32,
                                         batch_size2=4096), 1, dim, abar)
    assert math.hypot(plan.mu1, plan.mu2) == pytest.approx(mu)


def test_gdp_duality_calibration_and_composition():
    for mu in (0.3, 1.0, 2.0):
        eps = gdp.epsilon_of(mu, 1e-5)
        assert gdp.delta_of(eps, mu) == pytest.approx(1e-5, rel=1e-4)
        assert gdp.mu_of(eps, 1e-5) == pytest.approx(mu, rel=1e-5)
    assert gdp.epsilon_of(0.0, 1e-5) == 0.0 and gdp.epsilon_of(1.0, 1e-5) < gdp.epsilon_of(2.0, 1e-5)
    # sigma calibrated for 4 rounds of a phase I of mu 0.1 spends exactly epsilon 3
    sigma = gdp.sigma_for(3.0, 1e-5, 0.1 * 2, 0.2, 40 * 4)
    spent = accountant.Spent()
    for _ in range(4):
        spent = spent.plus(0.1, gdp.phase2_mu(0.2, 40, sigma), sigma, 0.2, 40)
    assert spent.epsilon(1e-5) == pytest.approx(3.0, rel=1e-6)
    assert len(spent.phase2) == 4 and spent.opacus_epsilon(1e-5) > 0  # opacus' RDP, phase II alone
    assert accountant.Spent.from_dict(json.loads(json.dumps(spent.to_dict()))) == spent
    with pytest.raises(ValueError, match="phase I alone spends epsilon"):
        gdp.sigma_for(1.0, 1e-5, 5.0, 0.2, 40)


class _Spy(torch.nn.Module):
    """A denoiser that records the timesteps and labels of every call, and whether opacus had wrapped it."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.net = fd.MLPDenoiser(dim, num_classes, width=16, depth=1)
        self.calls: list[tuple[torch.Tensor, torch.Tensor, bool]] = []

    def forward(self, z, t, y):
        hooked = any(getattr(m, "_forward_hooks", None) for m in self.net.modules())
        self.calls.append((t.clone(), y.clone(), hooked))
        return self.net(z, t, y)


def _data(n=40, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand((n, dim), generator=gen) * 2 - 1, torch.randint(0, 3, (n,), generator=gen))


def test_phase_one_is_unconditional_on_late_timesteps_and_phase_two_is_dp_sgd_on_early_ones():
    zn, y = _data()
    spy = _Spy(8, 4)
    diffusion = fd.FeatureDiffusion(spy, 8, null_from=900, null_label=3)
    dp = DpConfig(sigma=1.0, noise_multiplicity=3, max_grad_norm=1.0)
    plan = accountant.Plan(0.5, 4, 0.5, 4, 1.0, 0.0, 0.0)
    scheduler = fd.feature_scheduler(LdmlrConfig(beta_schedule="linear"))
    dp_diffusion.train_two_phase(diffusion, zn, y, plan, dp, scheduler, None, torch.device("cpu"),
                                 torch.Generator().manual_seed(0))
    phase1 = [not hooked for _, _, hooked in spy.calls]
    assert any(phase1) and not all(phase1) and phase1 == sorted(phase1, reverse=True)  # phase I, then phase II
    for (t, labels, hooked) in spy.calls:
        if not hooked:  # phase I: late timesteps, the null label, one draw per example, no opacus
            assert t.min() >= 900 and t.max() < 1000 and (labels == 3).all() and t.shape[1] == 1
        else:  # phase II, under opacus' hooks: early timesteps, real labels, K draws per example
            assert t.max() < 900 and t.shape[1] == 3 and (labels < 3).all() and (labels == labels[:, :1]).all()
    assert not any(getattr(m, "_forward_hooks", None) for m in spy.net.modules())  # opacus' hooks are gone


def test_empty_poisson_batches_still_take_the_noisy_step():
    zn, y = _data(n=5)
    diffusion = fd.build_feature_diffusion(LdmlrConfig(mlp_width=16, mlp_depth=1), 8, 4)
    before = [p.detach().clone() for p in diffusion.parameters()]
    plan = accountant.Plan(1e-9, 0, 1e-9, 3, 1.0, 0.0, 0.0)  # every batch empty
    dp = DpConfig(sigma=1.0, max_grad_norm=1.0, lr2=0.1)
    losses = dp_diffusion.train_two_phase(diffusion, zn, y, plan, dp, fd.feature_scheduler(LdmlrConfig()),
                                          None, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert losses["dp/loss-phase2"] == 0.0
    moved = [not torch.equal(a, b) for a, b in zip(before, diffusion.parameters(), strict=True)]
    assert all(moved)  # noise reached every parameter
    non_private = accountant.Plan(1e-9, 0, 1e-9, 3, None, math.inf, math.inf)
    fresh = fd.build_feature_diffusion(LdmlrConfig(mlp_width=16, mlp_depth=1), 8, 4)
    before = [p.detach().clone() for p in fresh.parameters()]
    dp_diffusion.train_two_phase(fresh, zn, y, non_private, dp, fd.feature_scheduler(LdmlrConfig()), None,
                                 torch.device("cpu"), torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(before, fresh.parameters(), strict=True))


def test_unbounded_features_are_refused():
    zn, y = _data()
    diffusion = fd.build_feature_diffusion(LdmlrConfig(mlp_width=16, mlp_depth=1), 8, 4)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        dp_diffusion.train_two_phase(diffusion, zn * 3, y, accountant.Plan(1, 1, 1, 1, 1.0, 0, 0), DpConfig(),
                                     fd.feature_scheduler(LdmlrConfig()), None, torch.device("cpu"),
                                     torch.Generator())


def _cfg(tiny_cfg, dp=None, **strategy):
    return tiny_cfg(task="ldmlr", rounds=2, data={"partition": {"kind": "longtail", "imbalance_factor": 10}},
                    train={"local_epochs": 1}, strategy={"name": "fedddpm", "encoder_epochs": 1, "aux_per_class": 4,
                                                         "head_per_class": 8, "correction_steps": 3,
                                                         "upload_per_class": 3, "plus_steps": 3, **strategy},
                    ldmlr={"mlp_width": 16, "mlp_depth": 1, "sampling_steps": 3, "score_per_class": 4,
                           "head_epochs": 2, "beta_schedule": "linear"},
                    dp={"batch_size1": 64, "batch_size2": 64, "epochs1": 1, "epochs2": 1, "max_grad_norm": 1.0,
                        "noise_multiplicity": 2, **(dp or {})})


def _rows(out):
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("correction, plus, progressive", [("public", True, False), ("generated", False, True)])
# (correction=generated alone: `make compare-ci`'s FedDDPM row; none, FedAvg of the denoisers, is this path without the
# correction step: `make compare-private`)
def test_fedddpm_variants_and_what_leaves_a_client(correction, plus, progressive, tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg, {"epsilon": 5.0}, correction=correction, plus=plus, plus_threshold=10.0,
               progressive=progressive, progressive_min_fidelity=0.0)
    if plus:
        cfg = cfg.model_copy(update={"rounds": 3})
    grid = InProcessGrid(app, 3)
    summary = run_experiment(grid, cfg, tmp_path / "run")
    assert summary["status"] == "finished" and not summary["failures"]
    rows = _rows(tmp_path / "run")
    assert rows[0]["fedddpm/public-examples"] > 0 and "accuracy" in rows[-1]
    train = [m for m in grid.delivered if m.metadata.message_type == DPDIFFUSION_TRAIN]
    assert len(train) == 2 * 3
    for m in train:  # down: the frozen encoder as context, the denoiser to train
        assert all(k.startswith("diffusion.denoiser.") for k in m.content["arrays"].keys())
        assert not any(k.startswith("diffusion.denoiser.") for k in m.content["context"].keys())
    replies = [r for r in grid.received if r.metadata.reply_to_message_id in {m.metadata.message_id for m in train}]
    assert len(replies) == 2 * 3
    for r in replies:  # up: the denoiser's weights and the privacy figures, nothing of the data
        assert set(r.content["arrays"].keys()) == set(train[0].content["arrays"].keys())
        assert set(r.content["metrics"].keys()) == {"train-loss", "num-examples", "partition-id", "dp-epsilon",
                                                     "dp-epsilon-opacus", "dp-sigma"}
        assert 0 < r.content["metrics"]["dp-epsilon"] <= 5.0 + 1e-9
    # sigma is calibrated for every round the run could train (mu grows with the square root of the rounds)
    calibrated = gdp.epsilon_of(gdp.mu_of(5.0, 1e-5) * math.sqrt(2 / cfg.rounds), 1e-5)
    assert rows[2]["train/fedddpm/epsilon-max"] == pytest.approx(calibrated, rel=1e-6)
    assert rows[-1]["epsilon"] == rows[2]["train/fedddpm/epsilon-max"] and rows[-1]["rounds-trained"] == 2
    assert ("train/fedddpm/correction-loss" in rows[2]) == (correction != "none")
    if plus:  # a threshold no round meets: FedDDPM+ stops after round 2's test (round 1 has no previous score),
        # and round 3 sends nothing
        assert rows[2].get("train/fedddpm/stopped") == 1 and "train/fedddpm/plus-loss" in rows[2]
        assert rows[3]["bytes_up"] == 0 and rows[3]["bytes_down"] == 0
    if progressive:
        assert rows[2]["train/fedddpm/aux-refreshed"] > 0


def test_pseudo_feature_upload_carries_generated_features_only(tiny_cfg, tmp_path):
    cfg = _cfg(tiny_cfg, upload="features", correction="none")
    grid = InProcessGrid(app, 3)
    run_experiment(grid, cfg, tmp_path / "run")
    train = {m.metadata.message_id for m in grid.delivered if m.metadata.message_type == DPDIFFUSION_TRAIN}
    replies = [r for r in grid.received if r.metadata.reply_to_message_id in train]
    assert replies and "train/fedddpm/server-fit-loss" in _rows(tmp_path / "run")[-1]
    for r in replies:  # 3 of each of the 10 classes, whatever the client holds
        arrays = r.content["arrays"]
        assert set(arrays.keys()) == {"features", "labels"}
        assert sorted(arrays["labels"].numpy().tolist()) == sorted(list(range(10)) * 3)
        assert "dp-epsilon" not in r.content["metrics"]  # non-private here
    # `fedgen audit` on the run: the loss attack on the denoiser and the nearest-upload attack on what was sent
    settings = audit.Settings(timesteps=(100,), draws=1, examples=60, canary_runs=2, canary_rounds=1)
    assert audit.main([str(tmp_path / "run")], str(tmp_path / "audit"), settings, log=lambda _: None) == 0
    result = json.loads((tmp_path / "run" / "audit.json").read_text())
    assert result["model"] == "feature denoiser" and result["privacy"] is None
    for attack in ("loss", "control", "uploads"):
        a = result["membership"][attack]
        assert 0 <= a["auc"] <= 1 and a["members"] == a["nonmembers"] > 0
    assert result["canary"]["epsilon_replayed"] == math.inf and result["canary"]["ceiling"] == 0.0
    table = (tmp_path / "audit" / "audit.md").read_text()
    assert "(uploaded pseudo-features)" in table and (tmp_path / "audit" / "roc.png").stat().st_size > 0


def _ledger(cfg, pid):
    """The file name of simulated client ``pid``'s privacy ledger: a fingerprint of its data, nothing the server
    names (a node with a state-dir keeps one ledger, whatever the data: dp_ledger.NODE_LEDGER)."""
    return f"dp-spent-{dp_ledger.fingerprint(load_federation(cfg.data, cfg.seed).client(pid)[0])}.json"


NODE = f"{dp_ledger.NODE_LEDGER}.json"


def _node(grid, pid):
    return next(c for c in grid.contexts.values() if c.node_config["partition-id"] == pid)


def test_a_client_over_its_budget_refuses_and_the_run_goes_on(tiny_cfg, tmp_path):
    # client 0's node already spent most of its budget on its data (its ledger, on its own disk): it refuses
    # every round, naming its epsilon and the budget; the others train within theirs and the run goes on
    cfg = _cfg(tiny_cfg, {"epsilon": 5.0}, min_train_clients=1)
    state = tmp_path / "node0"
    state.mkdir()
    (state / NODE).write_text(json.dumps(accountant.Spent(mu1_sq=4.0).to_dict()))
    grid = InProcessGrid(app, 3)
    _node(grid, 0).node_config["state-dir"] = str(state)
    summary = run_experiment(grid, cfg, tmp_path / "run")
    assert summary["status"] == "finished"
    failures = summary["failures"]
    assert [(f["round"], f["client"]) for f in failures] == [(1, 0), (2, 0)]
    assert all("client 0: round" in f["reason"] and "over the budget dp.epsilon=5.0" in f["reason"]
               and "it does not train" in f["reason"] for f in failures)
    rows = _rows(tmp_path / "run")
    assert "train/fedddpm/epsilon-client0" not in rows[2] and rows[2]["train/fedddpm/epsilon-client1"] <= 5.0 + 1e-9
    spent = accountant.Spent.from_dict(json.loads((state / NODE).read_text()))
    assert spent.mu1_sq == 4.0 and not spent.phase2  # a refusal spends nothing
    assert (tmp_path / "run" / "client_state" / _ledger(cfg, 1)).exists()  # a simulated client's, in the run


def test_the_budget_is_the_clients_a_renamed_experiment_continues_and_a_greedier_server_is_refused(tiny_cfg,
                                                                                                     tmp_path):
    """Each node keeps its ledger in its own state-dir. A first run spends; another experiment name and seed (so
    another partition) on the same nodes continues that spending (the node's ledger, not one a name or a seed the
    server sends picks). A server that raises dp.epsilon past the nodes' own cap (node config dp-epsilon-max) is
    refused by every client, and the run stops naming the cap; a cap without a state-dir is refused too."""
    cfg = _cfg(tiny_cfg, {"epsilon": 5.0}, min_train_clients=1)
    states = [tmp_path / f"node{k}" for k in range(3)]

    def grid(cap=None):
        g = InProcessGrid(app, 3)
        for k in range(3):
            _node(g, k).node_config.update({"state-dir": str(states[k]), **({"dp-epsilon-max": cap} if cap else {})})
        return g

    run_experiment(grid(), cfg, tmp_path / "first")
    first = accountant.Spent.from_dict(json.loads((states[1] / NODE).read_text())).epsilon(cfg.dp.delta)
    assert 0 < first <= 5.0 + 1e-9
    renamed = cfg.model_copy(update={"name": "renamed", "seed": 5})
    with pytest.raises(Exception, match=r"client 1: round 1 would bring its epsilon from 5 .* over the budget"):
        run_experiment(grid(), renamed, tmp_path / "renamed")  # every client refuses: the first run spent it all
    assert sorted(p.name for p in states[1].glob("dp-spent-*.json")) == [NODE]

    greedy = _cfg(tiny_cfg, {"epsilon": 20.0}, min_train_clients=1).model_copy(update={"name": "greedy"})
    with pytest.raises(Exception, match=r"over the node's own cap dp-epsilon-max=6.0"):
        run_experiment(grid(cap="6"), greedy, tmp_path / "greedy")
    after = accountant.Spent.from_dict(json.loads((states[1] / NODE).read_text())).epsilon(cfg.dp.delta)
    assert after == first  # refusals charge nothing
    capped = InProcessGrid(app, 3)
    for k in range(3):
        _node(capped, k).node_config["dp-epsilon-max"] = "6"
    with pytest.raises(Exception, match=r"caps its privacy \(dp-epsilon-max\) but keeps no state-dir"):
        run_experiment(capped, cfg, tmp_path / "no-state-dir")


def test_bad_private_configs_fail_before_any_work(tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match="ldmlr.denoiser=mlp"):
        tiny_cfg(task="ldmlr", strategy={"name": "fedddpm"}, ldmlr={"denoiser": "unet1d"})
    with pytest.raises(ConfigError, match="dp.split_step"):
        tiny_cfg(task="ldmlr", strategy={"name": "fedddpm"}, dp={"split_step": 1000})
    with pytest.raises(ConfigError, match="upload=features"):
        tiny_cfg(task="ldmlr", strategy={"name": "fedddpm", "upload": "features", "correction": "generated"})
    with pytest.raises(ConfigError, match="does not run task=classify"):
        tiny_cfg(strategy={"name": "fedddpm"})
    cosine = _cfg(tiny_cfg, {"epsilon": 1.0})  # cosine betas: abar at S = 900 is 0.024 and phase I alone costs more
    cosine = cosine.model_copy(update={"ldmlr": cosine.ldmlr.model_copy(update={"beta_schedule": "cosine"})})
    grid = InProcessGrid(app, 3)
    with pytest.raises(ValueError, match="client 0: phase I alone spends epsilon"):
        run_experiment(grid, cosine, tmp_path / "run")
    assert not grid.delivered


def test_bounds_map_public_features_into_the_unit_box():
    z = torch.randn(500, 6) * 4 + 2
    diffusion = fd.build_feature_diffusion(LdmlrConfig(mlp_width=16, mlp_depth=1), 6, 3)
    fedddpm.set_bounds(diffusion, z, 3.0)
    zn = fedddpm.bounded(diffusion, z)
    assert zn.abs().max() <= 1 and (zn.abs() == 1).float().mean() < 0.01  # 3 std: under 1% clipped


@pytest.mark.integration
def test_a_private_federated_run_on_ray(tmp_path, fedgen_run):
    out = tmp_path / "run"
    proc = fedgen_run("simulations/configs/private_digits.yaml",
                      ["rounds=1", "data.num_clients=3", "strategy.encoder_epochs=1", "strategy.aux_per_class=4",
                       "strategy.head_per_class=8", "strategy.correction_steps=3", "ldmlr.mlp_width=16",
                       "ldmlr.mlp_depth=1", "ldmlr.sampling_steps=3", "ldmlr.score_per_class=4",
                       "ldmlr.head_epochs=2", "dp.epochs2=1", "dp.batch_size2=128"], out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and not summary["failures"]
    last = _rows(out)[-1]
    assert last["train/fedddpm/epsilon-max"] == pytest.approx(4.0, rel=1e-6)  # the config's budget, in one round
    assert last["train/fedddpm/epsilon-opacus-client0"] > 0
    assert "Secure RNG" not in proc.stdout + proc.stderr  # opacus' notes stay off the console
