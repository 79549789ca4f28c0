"""Empirical privacy: the Clopper-Pearson and lower-bound arithmetic against hand values, the attack's ROC figures,
the loss attack on an overfit and on a private denoiser, and the canary audit of a private mechanism (within its
epsilon) and of the same mechanism without noise (caught)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from fedgen.config import DpConfig, LdmlrConfig
from fedgen.diffusion import features as fd
from fedgen.privacy import accountant, audit, dp_diffusion, gdp


def test_clopper_pearson_against_hand_values():
    # k = 0 and k = n have closed forms: (0, 1 - (a/2)^(1/n)) and ((a/2)^(1/n), 1); 0.025^(1/10) = 0.691503
    assert audit.clopper_pearson(0, 10) == pytest.approx((0.0, 0.308497), abs=1e-6)
    assert audit.clopper_pearson(10, 10) == pytest.approx((0.691503, 1.0), abs=1e-6)
    # tabulated exact binomial intervals: 5 of 10 -> [0.1871, 0.8129], 1 of 20 -> [0.0013, 0.2487]
    assert audit.clopper_pearson(5, 10) == pytest.approx((0.1871, 0.8129), abs=1e-4)
    assert audit.clopper_pearson(1, 20) == pytest.approx((0.0013, 0.2487), abs=1e-4)
    assert audit.clopper_pearson(0, 10, confidence=0.5)[1] == pytest.approx(1 - 0.25 ** (1 / 10), abs=1e-9)
    with pytest.raises(ValueError, match="k <= n"):
        audit.clopper_pearson(11, 10)


def test_the_lower_bound_against_hand_values():
    # a perfect test over 50 + 50 runs: FPR_hi = FNR_hi = 1 - 0.025^(1/50) = 0.0711217;
    # log((1 - 1e-5 - 0.0711217) / 0.0711217) = 2.569574
    assert audit.epsilon_lower_bound(0, 50, 0, 50, 1e-5) == pytest.approx(2.569574, abs=1e-5)
    # 25 + 25: 1 - 0.025^(1/25) = 0.1371852 -> 1.838857
    assert audit.epsilon_lower_bound(0, 25, 0, 25, 1e-5) == pytest.approx(1.838857, abs=1e-5)
    # one false negative of 20, none of 20 false positives: FNR_hi 0.2487, FPR_hi 1 - 0.025^(1/20) = 0.1684;
    # max(log((1 - 0.1684) / 0.2487), log((1 - 0.2487) / 0.1684)) = log(4.4614) = 1.4955
    assert audit.epsilon_lower_bound(0, 20, 1, 20, 1e-5) == pytest.approx(1.4955, abs=2e-3)
    assert audit.epsilon_lower_bound(5, 10, 5, 10, 1e-5) == 0.0  # a coin proves nothing
    assert audit.epsilon_lower_bound(0, 25, 25, 25, 1e-5) == 0.0  # nor does always answering "out"
    # the ceiling grows with the runs: what 2 x 10 runs could ever show is below what 2 x 50 can
    assert audit.epsilon_lower_bound(0, 10, 0, 10, 1e-5) < audit.epsilon_lower_bound(0, 50, 0, 50, 1e-5)


def test_roc_figures():
    far, near = torch.arange(100.0) + 1000, torch.arange(100.0)
    report = audit.attack_report(far, near, bootstrap=50)
    assert report["auc"] == 1.0 and report["tpr@0.01"] == 1.0 and report["tpr@0.001"] == 1.0
    assert report["min_fpr"] == 0.01
    assert audit.roc(near, far)[2] == 0.0
    gen = torch.Generator().manual_seed(0)
    same = audit.attack_report(torch.randn(2000, generator=gen), torch.randn(2000, generator=gen), bootstrap=50)
    assert abs(same["auc"] - 0.5) < 0.03 and same["tpr@0.01"] < 0.03
    assert same["auc_ci"][0] <= same["auc"] <= same["auc_ci"][1]
    fpr, tpr = np.array([0.0, 0.005, 0.02, 1.0]), np.array([0.0, 0.3, 0.6, 1.0])
    assert audit.tpr_at(fpr, tpr, 0.01) == 0.3


def test_members_and_non_members_are_label_matched():
    members, pool = np.array([0] * 30 + [1] * 5), np.array([0] * 10 + [1] * 40 + [2] * 7)
    m, o = audit.label_matched(members, pool, limit=100)
    assert np.bincount(members[m]).tolist() == np.bincount(pool[o]).tolist() == [10, 5]
    m, o = audit.label_matched(members, pool, limit=6)  # scaled down, classes kept in proportion
    assert len(m) == len(o) <= 6 and np.bincount(members[m]).tolist() == np.bincount(pool[o]).tolist()
    with pytest.raises(ValueError, match="no class"):
        audit.label_matched(np.array([0]), np.array([1]), 10)


D, CLASSES = 8, 3
CFG = LdmlrConfig(mlp_width=128, mlp_depth=2, beta_schedule="linear")


def _train(diffusion, z, y, epochs, epsilon=None, seed=0, lr=1e-3, batch=16, n=None):
    """Plain DP-SGD (no phase I), one round, planned for ``n`` examples (default: as many as given); with epsilon,
    sigma calibrated for it."""
    dp = DpConfig(batch_size2=batch, epochs1=0, epochs2=epochs, split_step=1000, max_grad_norm=1.0,
                  noise_multiplicity=1, lr2=lr, epsilon=epsilon)
    p = accountant.plan(n or len(y), dp, 1, D, 0.5)
    dp_diffusion.train_two_phase(diffusion, z, y, p, dp, fd.feature_scheduler(CFG), 5.0, torch.device("cpu"),
                                 torch.Generator().manual_seed(seed))
    return p


def _errors(diffusion, z, y, timesteps, draws=4):
    scheduler = fd.feature_scheduler(CFG)

    def error(idx, t, noise):
        pred = diffusion.denoiser(fd.noised(scheduler, z[idx], noise, t), t, y[idx])
        return fd.weighted_error(pred, z[idx], noise, t, scheduler, 5.0)

    return audit.denoising_errors(error, len(y), (D,), timesteps, draws, 64, 0)


def _cube(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, D, generator=gen) * 2 - 1, torch.randint(0, 2, (n,), generator=gen)


@pytest.mark.statistical
def test_the_loss_attack_finds_an_overfit_denoisers_members_and_not_a_private_ones():
    (zm, ym), (zo, yo) = _cube(16, 1), _cube(64, 2)
    torch.manual_seed(0)
    start = fd.build_feature_diffusion(CFG, D, CLASSES)
    aucs = {}
    for name, epochs, epsilon in (("overfit", 2000, None), ("private", 300, 0.1)):
        model = copy.deepcopy(start)
        _train(model, zm, ym, epochs, epsilon)
        em, eo = _errors(model, zm, ym, (50, 100, 200)), _errors(model, zo, yo, (50, 100, 200))
        aucs[name] = audit.roc(-em.mean(1), -eo.mean(1))[2]
    assert aucs["overfit"] > 0.85, aucs  # the attack works: 16 examples seen 2,000 times are denoised better
    assert abs(aucs["private"] - 0.5) < 0.2, aucs  # epsilon 0.1: no better than a guess, within 16 vs 64's noise


@pytest.mark.statistical
def test_a_private_mechanism_audits_within_its_epsilon_and_the_same_without_noise_is_caught():
    """One client's DP-SGD on 32 features; the canary a corner of the box, of a class no one else holds; the test
    its error against 8 crafted references'. With noise calibrated for epsilon 0.3 the bound stays below 0.3;
    without noise (a 'bug') the same 2 x 20 runs prove more than 0.3 was spent, and the audit reports it."""
    z, y = _cube(32, 3)
    gen = torch.Generator().manual_seed(4)
    crafted = torch.randint(0, 2, (9, D), generator=gen).float() * 2 - 1
    label = torch.full((9,), 2)
    torch.manual_seed(0)
    start = fd.build_feature_diffusion(CFG.model_copy(update={"mlp_width": 64, "mlp_depth": 1}), D, CLASSES)

    def mechanism(epsilon):
        def train_and_score(with_canary, seed):
            model = copy.deepcopy(start)
            zz, yy = (torch.cat([z, crafted[:1]]), torch.cat([y, label[:1]])) if with_canary else (z, y)
            _train(model, zz, yy, 100, epsilon, seed, lr=3e-3, batch=32, n=32)  # the same plan with the canary
            errs = _errors(model, crafted, label, (10, 100, 500), draws=16)
            return (errs[1:].mean(0) - errs[0]).numpy()
        return train_and_score

    dp = DpConfig(batch_size2=32, epochs1=0, epochs2=100, split_step=1000, max_grad_norm=1.0, epsilon=0.3)
    p = accountant.plan(32, dp, 1, D, 0.5)
    claimed = gdp.epsilon_of(math.hypot(p.mu1, p.mu2), dp.delta)
    assert claimed == pytest.approx(0.3, rel=1e-6)
    private = audit.canary_audit(mechanism(0.3), 20, dp.delta)
    assert private.epsilon_lb <= claimed, private  # a correctly private run never audits above its epsilon
    broken = audit.canary_audit(mechanism(None), 20, dp.delta)
    assert broken.epsilon_lb > claimed, broken  # the audit has the power to catch a mechanism without noise
    assert broken.ceiling == pytest.approx(audit.epsilon_lower_bound(0, 10, 0, 10, dp.delta))


def test_fedgen_audit_refuses_what_it_cannot_audit_before_any_work(tiny_cfg, tmp_path):
    from fedgen.config import ConfigError, dump_yaml
    from simulations import audit as command

    with pytest.raises(ConfigError, match="does not exist"):
        command.main([str(tmp_path / "nowhere")], None, command.Settings())
    (tmp_path / "classify").mkdir()
    (tmp_path / "classify" / "config.yaml").write_text(dump_yaml(tiny_cfg()))
    with pytest.raises(ConfigError, match="not a diffusion run"):
        command.main([str(tmp_path / "classify")], None, command.Settings())
    (tmp_path / "ldmlr").mkdir()
    (tmp_path / "ldmlr" / "config.yaml").write_text(dump_yaml(tiny_cfg(task="ldmlr")))
    with pytest.raises(ConfigError, match="canary audits replay"):
        command.main([str(tmp_path / "ldmlr")], None, command.Settings(canary_runs=2))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither a run folder"):
        command.main([str(tmp_path / "empty")], None, command.Settings())
