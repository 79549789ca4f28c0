"""The audit's shared harness: its settings, what it can audit, a run folder loaded (its final model and how to
score examples against it), the run folders of a path, and the report (the table and the ROC curves)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import strategies
from fedgen import checkpoint, fedddpm, ldmlr, markdown
from fedgen.config import ConfigError, ExperimentConfig, load_config
from fedgen.data import Federation, ImageSet, load_federation
from fedgen.diffusion import conditioning, noise_scheduler, resize
from fedgen.diffusion import features as fd
from fedgen.plots import figure
from fedgen.privacy import accountant, audit
from fedgen.results import read_rounds
from fedgen.train import resolve_device
from strategies.fedddpm import DPDIFFUSION_TRAIN
from strategies.local import CLIENT_MODELS


@dataclass(frozen=True)
class Settings:
    timesteps: tuple[int, ...] = (50, 100, 200, 500)
    draws: int = 4
    examples: int = 1000
    """At most this many members and as many non-members."""
    client: int | None = None
    canary_runs: int = 0
    canary_rounds: int | None = None
    """Rounds of the client's local training each canary run replays back to back (default: the run's rounds)."""
    confidence: float = 0.95
    batch_size: int = 256
    seed: int = 0


def dp_rounds(cfg: ExperimentConfig) -> bool:
    """The run's feature clients train the denoiser in dp-promise rounds (the registry gives its method that role):
    their features were bounded into [-1, 1]^d, and a canary can replay a round."""
    return DPDIFFUSION_TRAIN in strategies.method(cfg.strategy.name).roles


def check(cfg: ExperimentConfig, run_dir: Path, canaries: bool = False) -> None:
    """What the audit can do with this run, or a ConfigError naming why not."""
    if cfg.task != "diffusion" and not (cfg.task == "ldmlr" and cfg.ldmlr.method != "ce"):
        raise ConfigError(f"{run_dir} is not a diffusion run (task {cfg.task}): the audit needs an image U-Net "
                          "(task diffusion) or a feature denoiser (task ldmlr, method not 'ce')")
    if canaries and cfg.task == "ldmlr" and not dp_rounds(cfg):
        raise ConfigError(f"{run_dir}: canary audits replay a client's round of denoiser training, which a feature "
                          f"run has under dp-promise clients only (strategy fedddpm; {cfg.strategy.name}'s train it "
                          "with the classifier): drop --canary-runs for this run")


class Target:
    """A run's final model and how to score examples against it."""

    def __init__(self, run_dir: Path, client: int | None = None) -> None:
        self.dir = run_dir
        cfg = self.cfg = load_config(run_dir / "config.yaml")
        check(cfg, run_dir)
        self.fed: Federation = load_federation(cfg.data, cfg.seed)
        self.device = resolve_device(cfg.device, cfg.deterministic)
        self.image = cfg.task == "diffusion"
        self.bounded = not self.image and dp_rounds(cfg)
        self.state = checkpoint.load(run_dir)["strategy"] if strategies.method(cfg.strategy.name).checkpoint \
            else None
        """The strategy's state at the end of the run (FedPhD's pruning plan, FedDDPM's uploaded pool)."""
        self.build = strategies.model_fn(cfg, self.fed, self.state)
        self.scheduler = noise_scheduler(cfg.diffusion) if self.image else fd.feature_scheduler(cfg.ldmlr)
        per_client = run_dir / f"{CLIENT_MODELS}.pt"  # a run whose clients keep their own models (Local)
        self.client = 0 if client is None and per_client.is_file() else client
        """Whose model (with per-client models) and whose examples are audited (None: every client's)."""
        if per_client.is_file():
            state = torch.load(per_client, weights_only=True)[self.client]
        else:
            state = torch.load(run_dir / ("unet.pt" if self.image else "model.pt"), weights_only=True)
        self.model = self.build()
        self.model.load_state_dict(state)
        self.model.to(self.device).eval()

    # --- the examples as the model sees them ---------------------------------------------------------------------
    def inputs(self, data: ImageSet) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounded images at the U-Net's size, or the features the denoiser was trained on, and labels."""
        if self.image:
            x, y = data.tensors()
            return resize(x, self.model.config.sample_size).clamp(-1, 1), y
        z, y = ldmlr.extract(self.model, data, self.cfg.train.eval_batch_size, self.device)
        return self.normalized(z), y

    def normalized(self, z: torch.Tensor) -> torch.Tensor:
        diffusion = self.model.diffusion.cpu()
        return fedddpm.bounded(diffusion, z) if self.bounded else diffusion.normalize(z).detach()

    def errors(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, timesteps, draws: int,
               batch_size: int, seed: int) -> torch.Tensor:
        """(n, len(timesteps)) denoising errors of ``model`` (this run's U-Net or feature diffusion, or a copy)."""
        model.to(self.device).eval()
        s = self.scheduler

        def error(idx, t, noise):
            x0, lab, t, noise = x[idx].to(self.device), y[idx].to(self.device), t.to(self.device), noise.to(self.device)
            if self.image:
                target = noise if s.config.prediction_type == "epsilon" else s.get_velocity(x0, noise, t)
                pred = model(s.add_noise(x0, noise, t), t, class_labels=conditioning(model, t, lab)).sample
                return ((pred.float() - target) ** 2).flatten(1).mean(1)
            pred = model.denoiser(fd.noised(s, x0, noise, t), t, model.conditioning(t, lab))
            return fd.weighted_error(pred, x0, noise, t, s, self.cfg.ldmlr.snr_gamma)

        return audit.denoising_errors(error, len(y), x.shape[1:], timesteps, draws, batch_size, seed)

    @property
    def generator(self) -> torch.nn.Module:
        return self.model if self.image else self.model.diffusion

    def untrained(self) -> torch.nn.Module:
        """The run's generator as built before any training (its initial model's seed): the attack's control, what
        the same scores give when no example was trained on (a difference between the member and non-member
        samples, not memorisation)."""
        torch.manual_seed(self.cfg.seed if self.cfg.init_seed is None else self.cfg.init_seed)
        fresh = self.build()
        return fresh if self.image else fresh.diffusion

    # --- who is a member -------------------------------------------------------------------------------------------
    def members(self, client: int | None) -> ImageSet:
        """A client's training examples; None: every client's."""
        return self.fed.pooled_train() if client is None else self.fed.client(client)[0]

    def plan(self, n: int) -> accountant.Plan:
        """The plan of a client with n examples in this run (sigma as the run calibrated it): images of
        3 x size x size, or the denoiser's features."""
        cfg = self.cfg
        d = 3 * self.model.config.sample_size**2 if self.image else self.model.diffusion.mean.numel()
        return accountant.plan(n, cfg.dp, cfg.rounds, d, accountant.abar_at(self.scheduler, cfg.dp.split_step))


def spent_epsilon(run_dir: Path) -> float | None:
    """The largest epsilon any client reported spending in the run (:func:`fedgen.privacy.accountant.largest` over
    rounds.jsonl's :data:`~fedgen.privacy.accountant.RUN_KEYS`)."""
    return accountant.largest(read_rounds(run_dir), accountant.RUN_KEYS)


def run_dirs(path: Path) -> list[Path]:
    """A run folder, or every run folder of a comparison (its <method>/seed<k>/) or of one of its methods."""
    if not path.is_dir():
        raise ConfigError(f"{path} does not exist (a comparison's run folders appear when `fedgen compare` ran)")
    if (path / "config.yaml").is_file():
        return [path]
    found = sorted(p.parent for p in [*path.glob("seed*/config.yaml"), *path.glob("*/seed*/config.yaml")])
    if not found:
        raise ConfigError(f"{path} is neither a run folder (no config.yaml) nor a comparison or method folder")
    return found


def _fmt(v, ci=None, digits=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    s = f"{v:.{digits}f}"
    return s + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def _accountant(r: dict) -> str:
    if r["privacy"] is None:
        return "non-private"
    return f"{_fmt(r['epsilon'], digits=2)} spent of {r['epsilon_budget']:g}" if r["epsilon_budget"] else \
        f"{_fmt(r['epsilon'], digits=2)} (sigma set)"


def table(results: list[dict]) -> str:
    header = ["run", "model", "epsilon (accountant, run)", "canary: epsilon of the rounds replayed",
              "empirical lower bound", "MIA AUC [95% CI]", "control: AUC of the untrained model",
              "TPR at 1% FPR [95% CI]", "TPR at 0.1% FPR"]
    rows = []
    for r in results:
        name = _name(r)
        kinds = [("loss", name)]
        if "uploads" in r["membership"]:
            kinds.append(("uploads", f"{name} (uploaded pseudo-features)"))
        for key, label in kinds:
            a, c = r["membership"][key], r.get("canary") if key == "loss" else None
            control = r["membership"]["control"]["auc"] if key == "loss" else None
            rows.append([
                label, r["model"], _accountant(r),
                _fmt(c["epsilon_replayed"], digits=2) if c else "-",
                f"{_fmt(c['epsilon_lb'], digits=2)} (of {c['ceiling']:.2f} provable)" if c else "-",
                _fmt(a["auc"], a["auc_ci"]), _fmt(control), _fmt(a["tpr@0.01"], a["tpr@0.01_ci"]),
                _fmt(a["tpr@0.001"])])
    return "\n".join(markdown.table(header, rows)) + "\n"


def _name(r: dict) -> str:
    """A comparison's method label (<method>/seed<k>), or the run folder's name."""
    path = Path(r["run"])
    return path.parent.name if path.name.startswith("seed") else path.name


def roc_plot(results: list[dict], path: Path) -> None:
    with figure(path, figsize=(5.5, 5), dpi=120) as (_, ax):
        for r in results:
            name = _name(r)
            for key, suffix in (("loss", ""), ("uploads", " (uploads)")):
                if key in r["membership"]:
                    a = r["membership"][key]
                    ax.plot(np.maximum(a["roc"]["fpr"], 1e-4), np.maximum(a["roc"]["tpr"], 1e-4),
                            label=f"{name}{suffix}: AUC {a['auc']:.3f}")
        ax.plot([1e-4, 1], [1e-4, 1], "k:", lw=1, label="chance")
        ax.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1), xlabel="false-positive rate",
               ylabel="true-positive rate", title="Membership inference (loss attack)")
        ax.legend(fontsize=7, loc="lower right")
