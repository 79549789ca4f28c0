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

One module per attack (:mod:`.membership`, :mod:`.uploads`, :mod:`.canary`); :mod:`.harness` loads a run and writes
the report; this module runs the command.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from fedgen.config import ConfigError, ExperimentConfig, load_config
from simulations.audit.canary import canaries
from simulations.audit.harness import Settings, Target, check, roc_plot, run_dirs, spent_epsilon, table
from simulations.audit.membership import membership

__all__ = ["Settings", "audit_run", "main"]


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
