"""Federated diffusion: the U-Net's local training, DDIM sampling, the generative scores and the diffusion task."""

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, MessageType
from flwr.serverapp.strategy import FedAvg, FedProx
from torchmetrics.image.fid import FrechetInceptionDistance

import strategies
from fedgen.config import ConfigError, DiffusionConfig, EvaluationConfig
from fedgen.data.digits import default_splits
from fedgen.diffusion import build_unet, diffusion_loss, noise_scheduler, sample, train
from fedgen.diffusion.evaluate import GenerativeScores, OwnExtractor, reference_classifier
from fedgen.wire import DIFFUSION_TRAIN, PROXIMAL_MU

CPU = torch.device("cpu")
TINY = DiffusionConfig(unet="tiny", image_size=16, batch_size=32, lr=1e-3, warmup_steps=0)


@pytest.fixture(scope="module")
def splits():
    return default_splits()


@pytest.fixture(scope="module")
def reference(splits, tmp_path_factory):
    cfg = EvaluationConfig(reference_epochs=3, cache_dir=str(tmp_path_factory.mktemp("reference")))
    return reference_classifier(splits["public"], splits["test"], 10, cfg, CPU)[0]


def _fixed_loss(model, cfg, x, y) -> float:
    gen = torch.Generator().manual_seed(123)
    noise = torch.randn(x.shape, generator=gen)
    t = torch.randint(0, cfg.num_train_timesteps, (len(x),), generator=gen)
    with torch.no_grad():
        return diffusion_loss(model.eval(), noise_scheduler(cfg), x, y, noise, t).item()


@pytest.mark.parametrize("cfg", [TINY, TINY.model_copy(update=dict(prediction="v_prediction", beta_schedule="cosine")),
                                 TINY.model_copy(update=dict(ema_decay=0.9, autocast="bf16"))],
                         ids=["epsilon-linear", "v-cosine", "ema-bf16"])
def test_local_training_lowers_the_denoising_loss_and_is_seeded(splits, cfg):
    data = splits["public"].subset(np.arange(256))
    x, y = data.tensors(np.arange(64))
    x = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", antialias=True)
    torch.manual_seed(0)
    model = build_unet(cfg, 10, 16)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    before = _fixed_loss(model, cfg, x, y)
    result = train(model, data, cfg.model_copy(update=dict(local_epochs=3)), CPU, seed=1)
    assert result.steps == 24 and result.num_examples == 256
    assert _fixed_loss(model, cfg, x, y) < 0.7 * before
    again = build_unet(cfg, 10, 16)
    again.load_state_dict(start)
    train(again, data, cfg.model_copy(update=dict(local_epochs=3)), CPU, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))


def test_warmup_continues_across_rounds(monkeypatch):
    """Round r starts its warm-up where round r-1 ended, so a client sampled late trains at the full rate."""
    from fedgen.data.images import ImageSet

    cfg = TINY.model_copy(update=dict(warmup_steps=100, batch_size=8))
    data = ImageSet(np.zeros((16, 16, 16, 3), np.uint8), np.zeros(16, np.int64), np.zeros(16, np.int64))
    seen: list[float] = []
    step = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    for rnd in (1, 60):
        train(build_unet(cfg, 10, 16), data, cfg, CPU, seed=0, server_round=rnd)
    assert seen == pytest.approx([cfg.lr * 1 / 100, cfg.lr * 2 / 100, cfg.lr, cfg.lr])


def test_ddim_sampling_is_seeded_and_in_range():
    model = build_unet(TINY, 10, 16)
    labels = torch.tensor([0, 1, 2, 3])
    a = sample(model, TINY, labels, steps=3, seed=5, device=CPU, batch_size=3)
    b = sample(model, TINY, labels, steps=3, seed=5, device=CPU)
    assert a.shape == (4, 3, 16, 16) and a.min() >= 0 and a.max() <= 1
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, sample(model, TINY, labels, steps=3, seed=6, device=CPU))


def test_paper_unet_has_fedphds_size():
    model = build_unet(DiffusionConfig(unet="paper"), 10, 32)
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - 35.7) < 0.1


@pytest.mark.statistical
def test_fid_of_a_set_against_itself_is_zero_and_grows_with_noise(splits, reference):
    test = splits["test"]
    scorer = GenerativeScores(test, reference, 16, dataset="digits-domains")
    images = scorer.as_generated(test.tensors()[0])
    labels = torch.from_numpy(test.labels).long()
    gen = torch.Generator().manual_seed(0)
    fids = []
    for sigma in (0.0, 0.05, 0.15, 0.4):
        noisy = (images + sigma * torch.randn(images.shape, generator=gen)).clamp(0, 1)
        fids.append(scorer(noisy, labels)["fid[own-digits-domains-cnn]"])
    assert abs(fids[0]) < 1e-2
    assert fids == sorted(fids) and fids[-1] > 10 * max(fids[1], 1e-3)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # dead ReLU units: singular covariances
def test_our_fid_equals_torchmetrics_own_and_the_formula_on_the_same_features(splits, reference):
    real, fake = splits["test"].subset(np.arange(600)), splits["public"].subset(np.arange(400))
    scorer = GenerativeScores(real, reference, 16, dataset="digits-domains", batch_size=128)
    fake_images = scorer.as_generated(fake.tensors()[0])
    ours = scorer(fake_images, torch.from_numpy(fake.labels).long())["fid[own-digits-domains-cnn]"]
    extractor = OwnExtractor(reference, "features")
    own = FrechetInceptionDistance(feature=extractor)  # fed in one batch each, no cached statistics
    own.update(scorer.as_generated(real.tensors()[0]), real=True)
    own.update(fake_images, real=False)
    assert ours == pytest.approx(float(own.compute()), rel=1e-4)
    from scipy import linalg

    f1 = extractor(scorer.as_generated(real.tensors()[0])).double().numpy()
    f2 = extractor(fake_images).double().numpy()
    c1, c2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    formula = ((f1.mean(0) - f2.mean(0)) ** 2).sum() + np.trace(c1 + c2 - 2 * linalg.sqrtm(c1 @ c2).real)
    assert ours == pytest.approx(formula, rel=1e-3)


def test_class_fidelity_reads_the_prompted_class(splits, reference):
    test = splits["test"]
    scorer = GenerativeScores(test, reference, 16, dataset="digits-domains")
    images, labels = scorer.as_generated(test.tensors()[0]), torch.from_numpy(test.labels).long()
    right = scorer(images, labels)["class-fidelity"]
    wrong = scorer(images, (labels + 1) % 10)["class-fidelity"]
    assert right > 0.6 and wrong < 0.15


def test_reference_classifier_is_cached_and_reused(splits, tmp_path, monkeypatch):
    cfg = EvaluationConfig(reference_epochs=1, cache_dir=str(tmp_path))
    first, acc = reference_classifier(splits["public"], splits["test"], 10, cfg, CPU)
    assert len(list(tmp_path.glob("reference-*.pt"))) == 1 and acc > 0.3

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr("fedgen.diffusion.evaluate.fit", no_training)
    second, acc2 = reference_classifier(splits["public"], splits["test"], 10, cfg, CPU)
    assert acc2 == acc
    a, b = first.state_dict(), second.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = cfg.model_copy(update=dict(reference_epochs=2))
    with pytest.raises(AssertionError, match="trained again"):  # another recipe is another cache entry
        reference_classifier(splits["public"], splits["test"], 10, other, CPU)


def test_inception_needs_a_weights_file(splits, reference, tiny_cfg):
    from simulations.runner import check_runnable

    with pytest.raises(ConfigError, match="evaluation.inception: no file at /nowhere/inception.pth"):
        check_runnable(tiny_cfg(task="diffusion", evaluation={"inception": "/nowhere/inception.pth"}))
    with pytest.raises(FileNotFoundError, match="evaluation.inception: no file at /nowhere/inception.pth"):
        GenerativeScores(splits["test"], reference, 16, inception="/nowhere/inception.pth")


def test_diffusion_config_is_checked(tiny_cfg):
    with pytest.raises(ConfigError, match="strategy 'feddyn' does not run task=diffusion"):
        tiny_cfg(task="diffusion", strategy={"name": "feddyn"})
    with pytest.raises(ConfigError, match="set strategy.fraction_evaluate=0"):
        tiny_cfg(task="diffusion", strategy={"name": "fedavg", "fraction_evaluate": 0.5})
    with pytest.raises(ConfigError, match="diffusion.unet"):
        tiny_cfg(task="diffusion", diffusion={"unet": "huge"})
    assert tiny_cfg(task="diffusion", strategy={"name": "centralized"}).diffusion.lr == 2e-4


def test_flower_strategies_send_the_tasks_training_messages(tiny_cfg, tmp_path):
    """FedAvg and FedProx are Flower's own; only the message type of their training messages follows the task."""
    from inprocess import InProcessGrid

    from clients.app import build_app
    from fedgen.comm import ByteLedger
    from fedgen.data import load_federation

    assert strategies.client_roles()[DIFFUSION_TRAIN] == "clients.diffusion:train"
    grid = InProcessGrid(build_app(), 3)

    for task, expected in (("classify", MessageType.TRAIN), ("diffusion", DIFFUSION_TRAIN)):
        cfg = tiny_cfg(task=task, strategy={"name": "fedprox", "proximal_mu": 0.5})
        ctx = strategies.RunContext(cfg, load_federation(cfg.data, 0), lambda: None, CPU, tmp_path, ByteLedger())
        strategy = strategies.method(cfg.strategy.name).build(ctx)
        inner = getattr(strategy, "inner", strategy)
        assert type(inner) is FedProx and isinstance(inner, FedAvg)
        messages = strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid)
        assert {m.metadata.message_type for m in messages} == {expected}
        assert {m.metadata.dst_node_id for m in messages} == set(grid.get_node_ids())
        assert all(m.content["config"][PROXIMAL_MU] == 0.5 for m in messages)


def test_a_diffusion_run_in_process_writes_its_scores(tiny_cfg, tmp_path):
    from inprocess import InProcessGrid

    from clients.app import build_app
    from simulations.server_app import run_experiment

    cfg = tiny_cfg(task="diffusion", rounds=3, diffusion={"unet": "tiny", "image_size": 16, "batch_size": 64},
                   evaluation={"samples_per_class": 2, "sampling_steps": 2, "every": 2, "reference_epochs": 1,
                               "cache_dir": str(tmp_path / "ref")})
    grid = InProcessGrid(build_app(), 3)
    summary = run_experiment(grid, cfg, tmp_path / "run")
    assert {m.metadata.message_type for m in grid.delivered} == {MessageType.QUERY, DIFFUSION_TRAIN}
    fid = "fid[own-digits-domains-cnn]"
    assert summary["metric"] == {"name": fid, "higher_is_better": False}
    rows = [json.loads(line) for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    assert [r[fid] is None for r in rows] == [False, True, False, False]  # rounds 0, 2 and the last scored
    assert summary["final"] == rows[-1][fid] and summary["final_scores"]["class-fidelity"] == rows[-1]["class-fidelity"]
    assert summary["report_columns"] == ["is[own-digits-domains-cnn]", "class-fidelity", "params (M)", "MACs (M)"]
    unet = build_unet(cfg.diffusion, 10, 16)
    assert summary["final_scores"]["params (M)"] == pytest.approx(sum(p.numel() for p in unet.parameters()) / 1e6)
    floor = summary["evaluation"]["floor_public_vs_test"]
    assert floor[fid] < rows[0][fid]  # real vs real beats the untrained U-Net
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == [
        "round-000.png", "round-002.png", "round-003.png"]
    assert (tmp_path / "run" / "unet.pt").exists() and (tmp_path / "run" / f"{fid}.png").exists()
    csv_rows = (tmp_path / "run" / "rounds.csv").read_text().splitlines()
    assert csv_rows[2].split(",")[1] == ""  # round 1: not scored, an empty cell

    from fedgen.report import write_report

    md = write_report(tmp_path, "t", {"FedAvg": {0: tmp_path / "run"}}, "here")
    assert (f"| method | final {fid} | best {fid} | is[own-digits-domains-cnn] | class-fidelity | params (M) "
            "| MACs (M) | MB up |") in md
    assert f"real vs real (the public split) {floor[fid]:.2f}; the untrained U-Net {rows[0][fid]:.2f}" in md


def test_the_floor_draws_real_images_of_every_class_and_domain(splits):
    from fedgen.diffusion.task import real_sample

    public = splits["public"]
    idx = real_sample(public.labels, 10, 50)
    assert len(idx) == 500 and len(set(idx)) == 500
    assert (np.bincount(public.labels[idx], minlength=10) == 50).all()
    assert set(public.domains[idx]) == set(public.domains)  # the split is ordered by domain: not its first images
    assert np.array_equal(idx, real_sample(public.labels, 10, 50))


def test_the_reference_classifier_is_the_same_on_every_machine(splits, tmp_path):
    """Seeded: two caches built from different process-wide random states hold the same CNN."""
    made = []
    for k, seed in enumerate((1, 2)):
        torch.manual_seed(seed)
        cfg = EvaluationConfig(reference_epochs=1, cache_dir=str(tmp_path / str(k)))
        made.append(reference_classifier(splits["public"], splits["test"], 10, cfg, CPU)[0].state_dict())
    assert all(torch.equal(made[0][k], made[1][k]) for k in made[0])
