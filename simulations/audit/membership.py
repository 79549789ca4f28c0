"""The loss attack: membership inference against a run's final model (minus the denoising error), with its
control (the same scores on the untrained model) and, with pseudo-feature upload, the nearest-upload attack."""

from __future__ import annotations

from fedgen.privacy import audit
from simulations.audit.harness import Settings, Target
from simulations.audit.uploads import _nearest_upload


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
