"""`fedgen audit`: the empirical privacy of a diffusion run folder (:mod:`fedgen.privacy.audit` has the math).

For each run (an image U-Net, task diffusion; or a feature denoiser, task ldmlr / strategy fedddpm; federated or
not, private or not):

- membership inference against the final model (rebuilt as the registry says, :func:`strategies.model_fn`: FedPhD's
  pruned as its plan says; with per-client models, Local's, ``--client``'s, default 0's): members are the clients'
  training examples (all clients', or ``--client``'s; with per-client models, that client's own), non-members the
  global test split, label-matched; the score is minus the denoising error at ``--timesteps`` (the mean over them
  and over ``--draws`` fixed noise draws). The public split is not used as non-members: a feature model's encoder
  was trained on it, so its features are not of the clients' distribution.
- with pseudo-feature upload (strategy.upload=features), the same members and non-members against what the clients
  sent (kept in the run's checkpoint): minus the distance to the nearest uploaded pseudo-feature of the same class.
- with ``--canary-runs N``: one client's (``--client``, default 0) local training, replayed as the run trained it
  (its plan: sampling rates, steps, sigma, clip, for ``--canary-rounds`` rounds back to back, by default the run's;
  from the final global model; the server's averaging with other clients, and weight-only strategy terms such as
  FedProx's, left out) N times with a crafted canary added to its data and N times without; the canary's denoising
  error at each audit timestep, against that of crafted references never trained on, is the test. The bound is
  compared with the accountant's epsilon of the rounds replayed (what the client's ledger charges for them); a
  bound above it is a bug in the implementation (clipping, noise or sampling), and the command fails.

Writes RUN/audit.json for each run, and OUT/audit.json, OUT/audit.md (the table) and OUT/roc.png (the attacks' ROC
curves, log-log).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import strategies
from fedgen import checkpoint, fedddpm, ldmlr
from fedgen.config import ConfigError, ExperimentConfig, load_config
from fedgen.data import Federation, ImageSet, load_federation
from fedgen.diffusion import conditioning, noise_scheduler, resize
from fedgen.diffusion import features as fd
from fedgen.diffusion import train as train_unet
from fedgen.diffusion import train_private as train_unet_private
from fedgen.privacy import audit, dp_diffusion, gdp
from fedgen.results import read_rounds
from fedgen.train import client_seed, resolve_device
from fedgen.wire import DP_EPSILON, DPDIFFUSION_TRAIN
from strategies.local import CLIENT_MODELS

CANARY_TIMESTEPS = (10, 100, 500, 950)
"""The canary's scores: one in each part of phase II and one in phase I (t >= dp.split_step's default 900)."""


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
        self.device = resolve_device(cfg.device)
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

    def plan(self, n: int):
        """The plan of a client with n examples in this run (sigma as the run calibrated it)."""
        cfg = self.cfg
        if self.image:
            from fedgen.diffusion import private_plan
            return private_plan(n, cfg, self.model.config.sample_size)
        d = self.model.diffusion.mean.numel()
        return dp_diffusion.plan(n, cfg.dp, cfg.rounds, d, dp_diffusion.abar_at(self.scheduler, cfg.dp.split_step))


def membership(target: Target, s: Settings) -> dict:
    """The loss attack (and, with pseudo-feature upload, the nearest-upload attack) against the run."""
    members, test = target.members(target.client), target.fed.test
    mi, oi = audit.label_matched(members.labels, test.labels, s.examples, s.seed)
    xm, ym = target.inputs(members.subset(mi))
    xo, yo = target.inputs(test.subset(oi))

    def errors(model):
        return (target.errors(model, x, y, s.timesteps, s.draws, s.batch_size, s.seed) for x, y in ((xm, ym), (xo, yo)))

    (em, eo), (cm, co) = errors(target.generator), errors(target.untrained())
    out = {"loss": audit.attack_report(-em.mean(1), -eo.mean(1), seed=s.seed),
           "control": audit.attack_report(-cm.mean(1), -co.mean(1), seed=s.seed),
           "auc_per_timestep": {int(t): audit.roc(-em[:, j], -eo[:, j])[2] for j, t in enumerate(s.timesteps)}}
    if getattr(target.cfg.strategy, "upload", None) == "features":  # FedDDPM's pseudo-feature upload
        pool = target.state["pool"]
        if pool is not None:
            out["uploads"] = audit.attack_report(*(_nearest_upload(x, y, *pool, target) for x, y in
                                                   ((xm, ym), (xo, yo))), seed=s.seed)
    return out


def _nearest_upload(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, zy: torch.Tensor,
                    target: Target) -> torch.Tensor:
    """Minus each example's squared distance to the nearest uploaded pseudo-feature of its class."""
    uploads = target.normalized(z)
    score = torch.full((len(y),), -math.inf)
    for c in torch.unique(y):
        mine, theirs = y == c, uploads[zy.long() == c]
        if len(theirs):
            score[mine] = -torch.cdist(x[mine], theirs).min(1).values ** 2
    return score


REFERENCES = 8
"""Crafted points like the canary, never trained on: the canary's score is their mean error minus its own, which
takes out how well the model happens to denoise such points at all (the run's training randomness)."""


def _crafted(target: Target, data: ImageSet, seed: int) -> tuple[ImageSet | torch.Tensor, int]:
    """The canary (first) and the references: random signs at the data's bound (corners of [-1, 1]^d for
    features; images of random black and white pixels), labelled as the class the client holds least of (one it
    does not hold at all, where there is one: then only the canary trains that class's embedding)."""
    rng = np.random.default_rng(seed + 12345)
    label = int(np.argmin(data.label_histogram(target.fed.num_classes)))
    n = 1 + REFERENCES
    if target.image:
        pixels = (rng.integers(0, 2, (n, *data.images.shape[1:])) * 255).astype(np.uint8)
        return ImageSet(pixels, np.full(n, label), np.zeros(n, dtype=np.int64)), label
    d = target.model.diffusion.mean.numel()
    return torch.from_numpy(rng.choice([-1.0, 1.0], (n, d))).float(), label


def canaries(target: Target, s: Settings, log=print) -> dict:
    """Replays ``--client``'s (default 0) local training ``s.canary_runs`` times with a canary and as many without;
    the bound, against the accountant's epsilon of the rounds replayed."""
    cfg, pid = target.cfg, target.client or 0
    data = target.members(pid)
    crafted, label = _crafted(target, data, cfg.seed)
    p = target.plan(len(data))  # the same plan with and without: Poisson rates do not change with one example
    if target.image:
        x_c, y_c = target.inputs(crafted)
        canary = crafted.subset(np.array([0]))
    else:
        z, y = target.inputs(data)
        x_c, y_c = crafted, torch.full((len(crafted),), label)
        z_in, y_in = torch.cat([z, x_c[:1]]), torch.cat([y, y_c[:1]])
    start = copy.deepcopy(target.generator).cpu()

    rounds = s.canary_rounds or cfg.rounds

    def train_and_score(with_canary: bool, run: int) -> np.ndarray:
        model = copy.deepcopy(start)
        for rnd in range(1, rounds + 1):
            seed = client_seed(cfg.seed * 7919 + run, rnd, pid)
            if target.image:
                run_data = ImageSet.concat([data, canary]) if with_canary else data
                if cfg.dp.private:
                    train_unet_private(model, run_data, cfg, p, target.device, seed)
                else:
                    train_unet(model, run_data, cfg.diffusion, target.device, seed, rnd)
            else:
                zz, yy = (z_in, y_in) if with_canary else (z, y)
                dp_diffusion.train_two_phase(model, zz, yy, p, cfg.dp, target.scheduler, cfg.ldmlr.snr_gamma,
                                             target.device, torch.Generator().manual_seed(seed))
        errs = target.errors(model, x_c, y_c, CANARY_TIMESTEPS, 16, s.batch_size, s.seed)
        return (errs[1:].mean(0) - errs[0]).numpy()

    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done % max(1, total // 10) == 0 or done == total:
            log(f"  canary runs {done}/{total} ({time.perf_counter() - t0:.0f} s)")

    result = audit.canary_audit(train_and_score, s.canary_runs, cfg.dp.delta, s.confidence, progress)
    mu = math.sqrt(rounds) * math.hypot(p.mu1, p.mu2)  # what the client's ledger charges for these rounds
    replayed_eps = gdp.epsilon_of(mu, cfg.dp.delta) if p.sigma is not None else math.inf
    return {**asdict(result), "client": pid, "client_examples": len(data), "canary_label": label,
            "runs": s.canary_runs, "rounds": rounds, "timestep": CANARY_TIMESTEPS[result.column],
            "epsilon_replayed": replayed_eps, "sigma": p.sigma, "seconds": time.perf_counter() - t0,
            "exceeds": bool(result.epsilon_lb > replayed_eps)}


def spent_epsilon(run_dir: Path) -> float | None:
    """The largest epsilon any client reported spending in the run (rounds.jsonl: the diffusion task's clients'
    'train/dp-epsilon', FedDDPM's 'epsilon')."""
    values = [r[k] for r in read_rounds(run_dir) for k in (f"train/{DP_EPSILON}", "epsilon") if r.get(k) is not None]
    return max(values) if values else None


def audit_run(run_dir: Path, s: Settings, log=print) -> dict:
    target = Target(run_dir, s.client)
    out = {"run": str(run_dir), "model": "image U-Net" if target.image else "feature denoiser",
           "strategy": target.cfg.strategy.name, "privacy": "dp" if target.cfg.dp.private else None,
           "epsilon": spent_epsilon(run_dir),
           "epsilon_budget": target.cfg.dp.epsilon, "delta": target.cfg.dp.delta, "settings": asdict(s)}
    t0 = time.perf_counter()
    out["membership"] = membership(target, s)
    log(f"{run_dir}: loss attack AUC {out['membership']['loss']['auc']:.3f} ({time.perf_counter() - t0:.0f} s)")
    if s.canary_runs:
        out["canary"] = canaries(target, s, log)
        c = out["canary"]
        log(f"{run_dir}: canary audit: epsilon >= {c['epsilon_lb']:.3f} (accountant, {c['rounds']} rounds replayed: "
            f"{c['epsilon_replayed']:.3f}; ceiling of {c['runs']} runs: {c['ceiling']:.2f})")
    (run_dir / "audit.json").write_text(json.dumps(out, indent=2))
    return out


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
    head = ("| run | model | epsilon (accountant, run) | canary: epsilon of the rounds replayed "
            "| empirical lower bound | MIA AUC [95% CI] | control: AUC of the untrained model "
            "| TPR at 1% FPR [95% CI] | TPR at 0.1% FPR |")
    lines = [head, "| " + " | ".join(["---"] * 9) + " |"]
    for r in results:
        name = _name(r)
        rows = [("loss", name)]
        if "uploads" in r["membership"]:
            rows.append(("uploads", f"{name} (uploaded pseudo-features)"))
        for key, label in rows:
            a, c = r["membership"][key], r.get("canary") if key == "loss" else None
            control = r["membership"]["control"]["auc"] if key == "loss" else None
            lines.append(" | ".join([
                f"| {label}", r["model"], _accountant(r),
                _fmt(c["epsilon_replayed"], digits=2) if c else "-",
                f"{_fmt(c['epsilon_lb'], digits=2)} (of {c['ceiling']:.2f} provable)" if c else "-",
                _fmt(a["auc"], a["auc_ci"]), _fmt(control), _fmt(a["tpr@0.01"], a["tpr@0.01_ci"]),
                _fmt(a["tpr@0.001"]) + " |"]))
    return "\n".join(lines) + "\n"


def _name(r: dict) -> str:
    """A comparison's method label (<method>/seed<k>), or the run folder's name."""
    path = Path(r["run"])
    return path.parent.name if path.name.startswith("seed") else path.name


def roc_plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(paths: list[str], out: str | None, s: Settings, log=print) -> int:
    runs = [d for p in paths for d in run_dirs(Path(p))]
    configs: list[ExperimentConfig] = [load_config(d / "config.yaml") for d in runs]  # fail before any work
    for d, cfg in zip(runs, configs, strict=True):
        check(cfg, d, canaries=s.canary_runs > 0)
        if s.client is not None and not 0 <= s.client < cfg.data.num_clients:
            raise ConfigError(f"--client {s.client} is outside 0..{cfg.data.num_clients - 1} for {d}")
    results = [audit_run(d, s, log) for d in runs]
    folder = Path(out) if out else (Path(paths[0]) / "audit")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "audit.json").write_text(json.dumps(results, indent=2))
    (folder / "audit.md").write_text(table(results))
    roc_plot(results, folder / "roc.png")
    log(f"wrote {folder}/audit.md, audit.json, roc.png")
    bad = [r for r in results if r.get("canary", {}).get("exceeds")]
    for r in bad:
        c = r["canary"]
        log(f"AUDIT FAILED: {r['run']}: the canary test proves epsilon >= {c['epsilon_lb']:.3f}, above the "
            f"accountant's {c['epsilon_replayed']:.3f} for the rounds replayed: the implementation does not deliver "
            "its guarantee (clipping, noise or sampling); please report it")
    return 1 if bad else 0
