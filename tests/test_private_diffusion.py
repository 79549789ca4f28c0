"""dp-promise on the image U-Net (the diffusion task's private clients): opacus on diffusers' blocks, per-sample
gradients, the two phases, physical batches, weight-only terms, and private FedAvg-DDPM and FedPhD runs."""

import copy
import json
import math

import pytest
import torch
from flwr.app import MessageType
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from fedgen.config import ConfigError, DiffusionConfig, DpConfig
from fedgen.diffusion import (
    UNETS,
    build_unet,
    conditioning,
    image_denoising,
    noise_scheduler,
    private_plan,
    train_private,
)
from fedgen.privacy import accountant, dp_diffusion, gdp
from fedgen.wire import DIFFUSION_TRAIN, DP_EPSILON, DP_EPSILON_OPACUS, DP_SIGMA, NUM_EXAMPLES, TRAIN_LOSS

CPU = torch.device("cpu")
TINY = DiffusionConfig(unet="tiny", image_size=16)


def _images(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, 16, 16), generator=gen) * 2 - 1, torch.randint(0, 10, (n,), generator=gen)


@pytest.mark.parametrize("size", list(UNETS))
def test_every_unet_size_passes_opacus_validation(size):
    """GroupNorm, no BatchNorm, attention blocks opacus accepts: DownBlock2D, AttnDownBlock2D, UpBlock2D,
    AttnUpBlock2D and the attention mid block, as built for every size."""
    unet = build_unet(DiffusionConfig(unet=size), 10, 16, null_from=900)
    assert ModuleValidator.validate(unet, strict=False) == []
    blocks = {type(b).__name__ for b in [*unet.down_blocks, *unet.up_blocks, unet.mid_block]}
    assert blocks <= {"DownBlock2D", "AttnDownBlock2D", "UpBlock2D", "AttnUpBlock2D", "UNetMidBlock2D"}
    assert unet.class_embedding.num_embeddings == 11 and unet.null_label == 10


def test_per_sample_gradients_of_the_unet_are_each_examples_own():
    """functorch's per-sample gradients, averaged over each example's K draws, equal the gradient of that example's
    loss computed alone, for every parameter of the digits U-Net (attention and class embedding included)."""
    torch.manual_seed(0)
    unet = build_unet(DiffusionConfig(unet="digits"), 10, 16, null_from=900)
    x0, y = _images(4)
    task = image_denoising(x0, y, noise_scheduler(TINY), 10)
    k = 2
    batch = task.draw(torch.arange(4), k, 0, 900, True, torch.Generator().manual_seed(1))
    assert batch[0].shape == (4, k, 3, 16, 16) and (batch[2] < 900).all()
    wrapped = GradSampleModule(copy.deepcopy(unet), force_functorch=True)
    task.loss(wrapped, batch).backward()
    params = list(wrapped.parameters())  # the wrapped model's, in its order
    dp_diffusion._mean_over_draws(params, k)
    checked = 0
    for i in range(4):
        alone = copy.deepcopy(unet)
        task.loss(alone, tuple(v[i:i + 1] for v in batch)).backward()
        for (name, p), q in zip(alone.named_parameters(), params, strict=True):
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            assert q.grad_sample.shape == (4, *p.shape)
            torch.testing.assert_close(q.grad_sample[i], g, rtol=1e-3, atol=1e-6, msg=name)
            checked += bool(g.abs().max() > 0)
    assert checked > 0.9 * 4 * len(params)


def test_opacus_hook_samplers_are_wrong_on_these_blocks_which_is_why_functorch():
    """The reason for functorch mode: opacus 1.6's hook-based per-sample gradients are zero for conv weights of the
    digits U-Net's lower levels whose true per-example gradients are not (15 of its 215 parameters here). If this
    starts failing, opacus fixed it and the faster hooks could be used for the U-Net again."""
    torch.manual_seed(0)
    unet = build_unet(DiffusionConfig(unet="digits"), 10, 16)
    x0, y = _images(4)
    task = image_denoising(x0, y, noise_scheduler(TINY), None)
    batch = task.draw(torch.arange(4), 1, 0, 1000, True, torch.Generator().manual_seed(1))
    wrapped = GradSampleModule(copy.deepcopy(unet))
    task.loss(wrapped, batch).backward()
    alone = copy.deepcopy(unet)
    task.loss(alone, tuple(v[:1] for v in batch)).backward()
    zero = [name for (name, p), q in zip(alone.named_parameters(), wrapped.parameters(), strict=True)
            if p.grad.abs().max() > 1e-4 and q.grad_sample[0].abs().max() == 0]
    assert zero and all(name.endswith("conv.weight") or ".conv1." in name or ".conv2." in name for name in zero)
    assert "mid_block.resnets.0.conv1.weight" in zero


def _spy(unet):
    """Record each forward's timesteps and labels on the U-Net."""
    calls = []
    forward = unet.forward

    def spy(sample, timestep, class_labels=None, **kwargs):
        calls.append((timestep.clone(), class_labels.clone(), len(sample)))
        return forward(sample, timestep, class_labels=class_labels, **kwargs)

    unet.forward = spy
    return calls


def test_phase_one_is_unconditional_above_the_split_and_phase_two_sees_k_draws_below():
    unet = build_unet(TINY, 10, 16, null_from=900)
    calls = _spy(unet)
    x0, y = _images(12)
    dp = DpConfig(sigma=1.0, noise_multiplicity=3, max_grad_norm=1.0, split_step=900)
    plan = accountant.Plan(0.5, 2, 0.5, 2, 1.0, 0.0, 0.0)
    dp_diffusion.train_phases(unet, image_denoising(x0, y, noise_scheduler(TINY), 10), plan, dp, 1000, CPU,
                              torch.Generator().manual_seed(0))
    phase1 = [c for c in calls if (c[1] == 10).all()]
    phase2 = [c for c in calls if (c[1] < 10).all()]
    assert phase1 and phase2 and len(phase1) + len(phase2) == len(calls)
    assert calls[:len(phase1)] == phase1  # phase I first
    assert all(t.min() >= 900 for t, _, _ in phase1) and all(t.max() < 900 for t, _, _ in phase2)
    assert all(n % 3 == 0 for _, _, n in phase2)  # K = 3 rows per example
    labels = torch.cat([lab for _, lab, _ in phase2]).view(-1, 3)
    assert (labels == labels[:, :1]).all()  # an example's K rows share its label
    # sampling gives the null label where phase I trained
    assert conditioning(unet, torch.tensor(950), torch.tensor([3, 4])).tolist() == [10, 10]
    assert conditioning(unet, torch.tensor(10), torch.tensor([3, 4])).tolist() == [3, 4]


def _private_round(physical, penalties=(), sigma=1.0, clip=1.0, seed=0):
    torch.manual_seed(0)
    unet = build_unet(TINY, 10, 16)
    x0, y = _images(24)
    dp = DpConfig(sigma=sigma, max_grad_norm=clip, noise_multiplicity=2, epochs1=0, split_step=1000,
                  physical_batch_size=physical, lr2=1e-2)
    plan = accountant.Plan(1.0, 0, 0.5, 3, sigma, 0.0, 0.0)
    losses = dp_diffusion.train_phases(unet, image_denoising(x0, y, noise_scheduler(TINY), None), plan, dp, 1000,
                                       CPU, torch.Generator().manual_seed(seed), penalties)
    return unet, losses


def test_physical_batches_take_the_same_noisy_step():
    """BatchMemoryManager's scheme: chunks of at most 5 examples of each ~12-example Poisson batch, clipped and
    summed chunk by chunk, noised once: the same weights as the whole batch at once."""
    whole, loss_whole = _private_round(None)
    chunked, loss_chunked = _private_round(5)
    for a, b in zip(whole.parameters(), chunked.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert loss_whole["dp/loss-phase2"] == pytest.approx(loss_chunked["dp/loss-phase2"], rel=1e-5)
    fresh = build_unet(TINY, 10, 16)
    assert any(not torch.equal(a, b) for a, b in zip(fresh.parameters(), whole.parameters(), strict=True))


def test_weight_only_terms_reach_every_parameter_after_the_noise():
    """A term with gradient 1 everywhere, beside per-sample gradients clipped to nothing: Adam's first step moves
    every weight by -lr exactly, so the term was added to the privatized gradient, untouched by clipping."""
    torch.manual_seed(0)
    before = [p.detach().clone() for p in build_unet(TINY, 10, 16).parameters()]
    ones = [lambda model: sum(p.sum() for p in model.parameters())]
    unet, _ = _private_round(None, ones, sigma=1.0, clip=1e-12)
    for a, b in zip(before, unet.parameters(), strict=True):
        torch.testing.assert_close(b.detach() - a, torch.full_like(a, -3e-2), rtol=1e-3, atol=1e-6)  # 3 steps


def test_private_configs_are_checked(tiny_cfg):
    private = {"task": "diffusion", "dp": {"epsilon": 5}}
    with pytest.raises(ConfigError, match="strategy 'moon' cannot train the image U-Net with DP-SGD.*fedavg"):
        tiny_cfg(**private, strategy={"name": "moon"})
    with pytest.raises(ConfigError, match="strategy 'scaffold' cannot"):
        tiny_cfg(**private, strategy={"name": "scaffold"})
    with pytest.raises(ConfigError, match="strategy 'centralized' cannot"):
        tiny_cfg(**private, strategy={"name": "centralized"})
    with pytest.raises(ConfigError, match="set dp.epochs1=0"):
        tiny_cfg(task="diffusion", dp={"epsilon": 5, "split_step": 1000})
    with pytest.raises(ConfigError, match="dp.split_step=1001 must lie in 1..1000"):
        tiny_cfg(task="diffusion", dp={"epsilon": 5, "split_step": 1001, "epochs1": 0})
    with pytest.raises(ConfigError, match="diffusion.autocast=none"):
        tiny_cfg(**private, diffusion={"autocast": "bf16"})
    with pytest.raises(ConfigError, match="unset diffusion.ema_decay"):
        tiny_cfg(**private, diffusion={"ema_decay": 0.9})
    plain = tiny_cfg(task="diffusion", dp={"epsilon": 5, "split_step": 1000, "epochs1": 0})
    assert plain.dp.private and tiny_cfg(task="diffusion", strategy={"name": "fedphd", "cloud_every": 1,
                                                                     "sparse_rounds": 1}, dp={"sigma": 1.0})


def test_a_phase_one_charge_past_a_float_is_refused_by_the_config(tiny_cfg):
    """32x32 RGB at S = 500: exp(4 d abar_S / (1 - abar_S)) overflows a float, so phase I alone spends an infinite
    epsilon; the config refuses it (with sigma alone too), and without phase I's epochs it is charged nothing."""
    assert gdp.phase1_mu(0.1, 10, 3 * 32**2, 0.1) == math.inf and gdp.phase1_mu(0.1, 0, 3 * 32**2, 0.1) == 0.0
    for dp in ({"epsilon": 10}, {"sigma": 1.0}):
        with pytest.raises(ConfigError, match="split_step=500 on 32x32 RGB images: phase I alone spends epsilon inf"):
            tiny_cfg(task="diffusion", dp={**dp, "split_step": 500})
        with pytest.raises(ConfigError, match=r"phase I alone spends epsilon inf"):
            tiny_cfg(task="diffusion", diffusion={"image_size": 32},
                     data={"dataset": "folder", "path": "x", "image_size": 8}, dp={**dp, "split_step": 500})
    assert tiny_cfg(task="diffusion", dp={"epsilon": 10, "split_step": 500, "epochs1": 0}).dp.split_step == 500
    assert tiny_cfg(task="diffusion", diffusion={"image_size": 8}, dp={"epsilon": 10, "split_step": 500})


def test_phase_one_charge_is_the_images_dimension(tiny_cfg):
    """d = 3 x 16 x 16 in the accountant: phase I at S = 800 on 16x16 images alone spends more than epsilon 10."""
    cfg = tiny_cfg(task="diffusion", diffusion={"unet": "tiny", "image_size": 16},
                   dp={"epsilon": 10, "split_step": 800, "batch_size1": 16, "epochs1": 1})
    with pytest.raises(ValueError, match="phase I alone spends epsilon"):
        private_plan(300, cfg, 16)
    cfg = tiny_cfg(task="diffusion", diffusion={"unet": "tiny", "image_size": 16},
                   dp={"epsilon": 10, "split_step": 900, "batch_size1": 16, "epochs1": 1})
    plan = private_plan(300, cfg, 16)
    abar = float(noise_scheduler(cfg.diffusion).alphas_cumprod[899])
    assert plan.mu1 == pytest.approx((1 / 19) * math.sqrt(19 * math.expm1(4 * 768 * abar / (1 - abar))), rel=1e-6)


@pytest.fixture(scope="module")
def reference_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("reference"))


def test_a_client_training_every_round_spends_exactly_the_budget(tiny_cfg):
    cfg = tiny_cfg(task="diffusion", rounds=7, diffusion={"unet": "tiny", "image_size": 16},
                   dp={"epsilon": 4, "split_step": 950, "batch_size1": 8, "epochs1": 1, "batch_size2": 64})
    plan = private_plan(300, cfg, 16)
    spent = accountant.Spent()
    for _ in range(cfg.rounds):
        spent = spent.plus(plan.mu1, plan.mu2, plan.sigma, plan.q2, plan.steps2)
    assert spent.epsilon(cfg.dp.delta) == pytest.approx(4, rel=1e-6)
    assert 0 < spent.opacus_epsilon(cfg.dp.delta)  # phase II alone, through opacus' RDP accountant


def _private_run(tiny_cfg, tmp_path, cache, strategy, rounds=2):
    """20 clients of about 280 images, 4 a round: 5 phase-I and 5 phase-II steps each."""
    from inprocess import InProcessGrid

    from clients.app import build_app
    from simulations.server_app import run_experiment

    cfg = tiny_cfg(task="diffusion", rounds=rounds, strategy={"fraction_train": 0.2, **strategy},
                   data={"num_clients": 20},
                   diffusion={"unet": "tiny", "image_size": 16},
                   dp={"epsilon": 10, "batch_size1": 64, "batch_size2": 64, "epochs1": 1, "epochs2": 1,
                       "noise_multiplicity": 2, "max_grad_norm": 1.0, "lr2": 1e-3, "physical_batch_size": 48},
                   evaluation={"samples_per_class": 2, "sampling_steps": 2, "every": rounds, "reference_epochs": 1,
                               "cache_dir": cache})
    grid = InProcessGrid(build_app(), cfg.data.num_clients)
    summary = run_experiment(grid, cfg, tmp_path / "run")
    return cfg, grid, summary


def test_a_private_fedavg_ddpm_run_stays_within_its_budget_and_sends_only_weights(tiny_cfg, tmp_path,
                                                                                  reference_cache):
    cfg, grid, summary = _private_run(tiny_cfg, tmp_path, reference_cache, {"name": "fedavg"})
    assert summary["status"] == "finished" and summary["final"] is not None
    privacy = summary["privacy"]
    assert 0 < privacy["epsilon"] <= 10 * (1 + 1e-9) and privacy["budget"] == 10 and privacy["delta"] == 1e-5
    assert summary["epsilon"] == privacy["epsilon"] and "epsilon" in summary["report_columns"]
    assert 0 < privacy["epsilon_opacus"]  # phase II alone, opacus' RDP accountant
    replies = [m for m in grid.received if m.metadata.message_type == DIFFUSION_TRAIN]
    assert len(replies) == 2 * 4
    rows = [json.loads(line) for line in (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()]
    largest = [max(m.content["metrics"][DP_EPSILON] for m in replies[4 * r:4 * r + 4]) for r in range(2)]
    assert [rows[1][f"train/{DP_EPSILON}"], rows[2][f"train/{DP_EPSILON}"]] == largest  # the round's largest
    ledgers = [accountant.Spent.from_dict(json.loads(p.read_text()))
               for p in (tmp_path / "run" / "client_state").glob("dp-spent-*.json")]
    assert len(ledgers) == len({m.metadata.src_node_id for m in replies})  # one per client that trained
    assert privacy["epsilon"] == pytest.approx(max(s.epsilon(1e-5) for s in ledgers))
    keys = set(build_unet(cfg.diffusion, 10, 16, null_from=cfg.dp.split_step).state_dict())
    for reply in replies:  # what leaves a private client: its U-Net's weights and the privacy it spent
        assert set(reply.content.array_records) == {"arrays"}
        assert set(reply.content["arrays"].keys()) == keys
        assert set(reply.content["metrics"].keys()) == {TRAIN_LOSS, NUM_EXAMPLES, DP_EPSILON, DP_EPSILON_OPACUS,
                                                        DP_SIGMA}
    # `fedgen audit` on the run: the loss attack on the U-Net, and a client's round replayed with a canary
    from simulations import audit

    settings = audit.Settings(timesteps=(100,), draws=1, examples=40, canary_runs=2, canary_rounds=1)
    assert audit.main([str(tmp_path / "run")], None, settings, log=lambda _: None) == 0
    result = json.loads((tmp_path / "run" / "audit.json").read_text())
    assert result["model"] == "image U-Net" and result["epsilon"] == privacy["epsilon"]
    assert 0 <= result["membership"]["loss"]["auc"] <= 1
    plan = private_plan(result["canary"]["client_examples"], cfg, 16)
    assert result["canary"]["epsilon_replayed"] == pytest.approx(gdp.epsilon_of(math.hypot(plan.mu1, plan.mu2), 1e-5))
    assert result["canary"]["epsilon_lb"] <= result["canary"]["epsilon_replayed"]
    assert "| run |" in (tmp_path / "run" / "audit" / "audit.md").read_text()


def test_fedphd_with_private_clients_prunes_and_stays_within_budget(tiny_cfg, tmp_path, reference_cache):
    """Hierarchy and pruning unchanged: the edges aggregate the clients' weights (never a gradient), the cloud
    prunes after sparse training, and the sparsity term rides on the noisy gradient."""
    cfg, grid, summary = _private_run(tiny_cfg, tmp_path, reference_cache,
                                      {"name": "fedphd", "cloud_every": 1, "sparse_rounds": 1, "num_edges": 2})
    assert summary["status"] == "finished" and 0 < summary["privacy"]["epsilon"] <= 10 * (1 + 1e-9)
    params = [r["params (M)"] for r in map(json.loads, (tmp_path / "run" / "rounds.jsonl").read_text().splitlines())
              if r["params (M)"] is not None]
    assert params[-1] < params[0]  # pruned after round 1
    replies = [m for m in grid.received if m.metadata.message_type != MessageType.QUERY]
    assert replies and all(set(m.content["metrics"].keys()) >= {DP_EPSILON, DP_SIGMA} for m in replies)
    assert all(not any("grad" in k for k in m.content["arrays"].keys()) for m in replies)
    # `fedgen audit` loads the pruned U-Net from the plan in the checkpoint and scores it
    from simulations import audit

    settings = audit.Settings(timesteps=(100,), draws=1, examples=40)
    assert audit.main([str(tmp_path / "run")], None, settings, log=lambda _: None) == 0
    result = json.loads((tmp_path / "run" / "audit.json").read_text())
    assert 0 <= result["membership"]["loss"]["auc"] <= 1 and "canary" not in result


def test_train_private_refuses_phase_one_without_a_null_label(tiny_cfg):
    cfg = tiny_cfg(task="diffusion", diffusion={"unet": "tiny", "image_size": 16}, dp={"sigma": 1.0})
    from fedgen.data import load_federation

    data, _ = load_federation(cfg.data, 0).client(0)
    plan = private_plan(len(data), cfg, 16)
    with pytest.raises(ValueError, match="null label"):
        train_private(build_unet(cfg.diffusion, 10, 16), data, cfg, plan, CPU, 0)
