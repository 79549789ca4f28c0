"""Empirical privacy of a diffusion model: loss-based membership inference and DP auditing with canaries.

Membership inference (Carlini et al., "Extracting training data from diffusion models", 2023; Matsumoto et al.,
2023): a diffusion model denoises its training examples better than unseen ones, so an example's denoising error at
chosen timesteps, averaged over fixed noise draws, scores membership (lower error: member). The attack is judged by
its ROC: the AUC and the true-positive rate at a low false-positive rate (1%, 0.1%), the figure that matters for an
attacker who must be confident (Carlini et al., "Membership inference attacks from first principles", 2022), with
bootstrap confidence intervals.

Auditing (Jagielski, Ullman and Oprea, 2020; Nasr et al., 2021): a mechanism that is (epsilon, delta)-DP bounds any
test that tells "trained with the canary" from "trained without": FPR + e^epsilon FNR >= 1 - delta and
FNR + e^epsilon FPR >= 1 - delta. Over repeated runs with and without a canary, the upper Clopper-Pearson bounds of
the test's FPR and FNR turn into a lower bound on epsilon that holds with the stated confidence:

    epsilon_lb = max(log((1 - delta - FPR_hi) / FNR_hi), log((1 - delta - FNR_hi) / FPR_hi), 0)

The test's threshold (and which timestep's score it reads) is chosen on half of the runs and the bound computed on
the other half, so the choice does not bias it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import beta, rankdata
from torchmetrics.functional.classification import binary_auroc, binary_roc

FPRS = (0.01, 0.001)
"""The low false-positive rates whose true-positive rate is reported."""


# --- membership inference ------------------------------------------------------------------------------------------
@torch.no_grad()
def denoising_errors(error: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], n: int,
                     shape: Sequence[int], timesteps: Sequence[int], draws: int, batch_size: int,
                     seed: int) -> torch.Tensor:
    """(n, len(timesteps)): each example's error at each timestep, the mean over ``draws`` noise draws.
    ``error(idx, t, noise)`` is the per-example error of examples ``idx`` at timesteps t (len(idx),) and noise
    (len(idx), *shape). The noise of example i, timestep j, draw k is the same in every call with the same seed,
    so two models, or two runs, are scored on identical draws."""
    out = torch.zeros(n, len(timesteps))
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(n, start + batch_size))
        for j, t in enumerate(timesteps):
            for k in range(draws):
                gen = torch.Generator().manual_seed(seed * 1_000_003 + j * 1009 + k)
                noise = torch.randn((n, *shape), generator=gen)[idx]
                out[idx, j] += error(idx, torch.full((len(idx),), int(t)), noise).float().cpu() / draws
    return out


def roc(members: torch.Tensor, nonmembers: torch.Tensor) -> tuple[np.ndarray, np.ndarray, float]:
    """The attack's ROC (higher score: member): FPR, TPR and the AUC. The scores go in as their ranks scaled into
    (0, 1]: torchmetrics reads scores outside [0, 1] as logits and squashes them, which ties large ones."""
    joined = torch.cat([members, nonmembers]).double()
    scores = torch.from_numpy(rankdata(joined.numpy()) / len(joined))
    truth = torch.cat([torch.ones(len(members)), torch.zeros(len(nonmembers))]).long()
    fpr, tpr, _ = binary_roc(scores, truth)
    return fpr.numpy(), tpr.numpy(), float(binary_auroc(scores, truth))


def tpr_at(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The best TPR at an FPR of at most ``target`` (0 where no threshold reaches it)."""
    ok = fpr <= target
    return float(tpr[ok].max()) if ok.any() else 0.0


def attack_report(members: torch.Tensor, nonmembers: torch.Tensor, fprs: Sequence[float] = FPRS,
                  bootstrap: int = 200, confidence: float = 0.95, seed: int = 0) -> dict:
    """AUC and TPR at each of ``fprs``, each with a percentile bootstrap interval (members and non-members resampled
    apart). With n non-members the smallest FPR measured is 1/n: 'min_fpr' says it."""
    fpr, tpr, auc = roc(members, nonmembers)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(bootstrap):
        m = members[torch.from_numpy(rng.integers(0, len(members), len(members)))]
        o = nonmembers[torch.from_numpy(rng.integers(0, len(nonmembers), len(nonmembers)))]
        f, t, a = roc(m, o)
        boot.append([a, *(tpr_at(f, t, x) for x in fprs)])
    lo, hi = np.quantile(np.array(boot), [(1 - confidence) / 2, (1 + confidence) / 2], axis=0)
    out = {"members": len(members), "nonmembers": len(nonmembers), "min_fpr": 1 / len(nonmembers),
           "auc": auc, "auc_ci": [float(lo[0]), float(hi[0])], "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}}
    for i, x in enumerate(fprs, start=1):
        out[f"tpr@{x:g}"] = tpr_at(fpr, tpr, x)
        out[f"tpr@{x:g}_ci"] = [float(lo[i]), float(hi[i])]
    return out


def label_matched(member_labels: np.ndarray, pool_labels: np.ndarray, limit: int,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of members and of non-members (from ``pool``) with the same number of each class, at most ``limit``
    a side: a model's error differs from class to class, so unmatched classes would score the class, not
    membership."""
    rng = np.random.default_rng(seed)
    classes = np.union1d(member_labels, pool_labels)
    per_class = {c: min((member_labels == c).sum(), (pool_labels == c).sum()) for c in classes}
    total = sum(per_class.values())
    if total == 0:
        raise ValueError("members and non-members share no class: membership cannot be told from class")
    scale = min(1.0, limit / total)
    picks_m, picks_o = [], []
    for c, k in per_class.items():
        k = int(math.floor(k * scale))
        picks_m.append(rng.choice(np.flatnonzero(member_labels == c), k, replace=False))
        picks_o.append(rng.choice(np.flatnonzero(pool_labels == c), k, replace=False))
    return np.sort(np.concatenate(picks_m)), np.sort(np.concatenate(picks_o))


# --- auditing ------------------------------------------------------------------------------------------------------
def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The two-sided Clopper-Pearson interval of a binomial proportion, k successes in n trials."""
    if not 0 <= k <= n or n < 1:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    a = 1 - confidence
    lo = 0.0 if k == 0 else float(beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def epsilon_lower_bound(false_pos: int, negatives: int, false_neg: int, positives: int, delta: float,
                        confidence: float = 0.95) -> float:
    """The epsilon that a test with these errors proves, with the given confidence: from the Clopper-Pearson upper
    bounds of its FPR (false_pos of the runs without the canary) and FNR (false_neg of the runs with it)."""
    fpr_hi = clopper_pearson(false_pos, negatives, confidence)[1]
    fnr_hi = clopper_pearson(false_neg, positives, confidence)[1]
    bounds = [0.0]
    for a, b in ((fpr_hi, fnr_hi), (fnr_hi, fpr_hi)):
        if 1 - delta - a > 0:
            bounds.append(math.log((1 - delta - a) / b))
    return max(bounds)


@dataclass(frozen=True)
class CanaryAudit:
    epsilon_lb: float
    """The empirical lower bound (0 where the test proves nothing)."""
    column: int
    """Which score (timestep) the test reads, chosen on the first half of the runs."""
    threshold: float
    false_pos: int
    negatives: int
    false_neg: int
    positives: int
    ceiling: float
    """The largest bound these many runs could prove (a perfect test)."""


def audit_scores(scores_in: np.ndarray, scores_out: np.ndarray, delta: float,
                 confidence: float = 0.95) -> CanaryAudit:
    """Scores (runs, columns) of the canary in runs trained with it and without it (higher: 'trained with'). The
    column and threshold that give the largest bound on the first half of each set of runs are chosen (thresholds
    midway between two observed scores), and the bound is computed with them on the second half."""
    scores_in, scores_out = scores_in.reshape(len(scores_in), -1), scores_out.reshape(len(scores_out), -1)
    h_in, h_out = len(scores_in) // 2, len(scores_out) // 2
    if min(h_in, h_out) < 1:
        raise ValueError("auditing needs at least 2 runs with the canary and 2 without")
    best = (-1.0, 0, 0.0)
    for col in range(scores_in.shape[1]):
        a, b = scores_in[:h_in, col], scores_out[:h_out, col]
        values = np.unique(np.concatenate([a, b]))
        for thr in (values[1:] + values[:-1]) / 2:  # midway between scores: a margin on both sides
            e = epsilon_lower_bound(int((b >= thr).sum()), len(b), int((a < thr).sum()), len(a), delta, confidence)
            if e > best[0]:
                best = (e, col, float(thr))
    _, col, thr = best
    test_in, test_out = scores_in[h_in:, col], scores_out[h_out:, col]
    fp, fn = int((test_out >= thr).sum()), int((test_in < thr).sum())
    bound = epsilon_lower_bound(fp, len(test_out), fn, len(test_in), delta, confidence)
    ceiling = epsilon_lower_bound(0, len(test_out), 0, len(test_in), delta, confidence)
    return CanaryAudit(bound, col, thr, fp, len(test_out), fn, len(test_in), ceiling)


def canary_audit(train_and_score: Callable[[bool, int], np.ndarray], runs: int, delta: float,
                 confidence: float = 0.95, progress: Callable[[int, int], None] | None = None) -> CanaryAudit:
    """``runs`` trainings with the canary and ``runs`` without (``train_and_score(with_canary, seed)``, seeds
    0..runs-1 for each, interleaved), each returning the canary's scores; then :func:`audit_scores`."""
    scores = {True: [], False: []}
    for seed in range(runs):
        for with_canary in (True, False):
            scores[with_canary].append(np.asarray(train_and_score(with_canary, seed), dtype=float))
            if progress:
                progress(2 * seed + (not with_canary) + 1, 2 * runs)
    return audit_scores(np.stack(scores[True]), np.stack(scores[False]), delta, confidence)
