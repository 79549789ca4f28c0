"""The comparison report: aggregate run summaries over seeds, write report.md / report.csv and the plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from fedgen import markdown
from fedgen.comm import CLIENT_SERVER, LONG_HAUL
from fedgen.plots import figure
from fedgen.results import plot_lines, read_rounds


def aggregate(summaries: list[dict], columns: list[str]) -> dict[str, tuple[float, float]]:
    """Mean and (population) standard deviation of each report column over seeds."""
    out = {}
    for c in columns:
        vals = np.array([s[c] for s in summaries], dtype=float)
        out[c] = (float(vals.mean()), float(vals.std()))
    return out


TIE_P = 0.05
"""A gap to the best with a paired p-value at or above this is not supported by the seeds."""


def versus(finals: dict[str, dict[int, float]], higher: bool, reference: str | None = None) -> dict[str, dict]:
    """Each method against ``reference`` (default: the best one by mean final score) over the seeds both ran: the
    mean paired difference (method minus reference), its two-sided paired t-test p-value, and ``tied`` when the seeds
    do not support the gap — the method's mean lies within one standard deviation (its own or the reference's, the
    larger) of the reference's, or p >= ``TIE_P``. With one common seed there is no test (p is NaN) and the gap
    counts as not supported."""
    from scipy.stats import ttest_rel

    means = {label: float(np.mean(list(by_seed.values()))) for label, by_seed in finals.items()}
    best = reference if reference is not None else (max if higher else min)(means, key=means.get)
    out = {}
    for label, by_seed in finals.items():
        seeds = sorted(set(by_seed) & set(finals[best]))
        a, b = np.array([by_seed[s] for s in seeds]), np.array([finals[best][s] for s in seeds])
        diff = a - b
        if label == best:
            p = 1.0
        elif len(seeds) < 2:
            p = float("nan")
        elif np.ptp(diff) == 0:  # every seed the same gap: no spread to test against
            p = 0.0 if diff[0] != 0 else 1.0
        else:
            p = float(ttest_rel(a, b).pvalue)
        spread = max(float(np.std(list(by_seed.values()))), float(np.std(list(finals[best].values()))))
        tied = label != best and (not p < TIE_P or abs(means[label] - means[best]) <= spread)
        out[label] = {"best": best, "delta": float(diff.mean()), "p": p, "tied": tied, "seeds": len(seeds)}
    return out


def _versus_cell(label: str, v: dict, me: str = "best") -> str:
    if label == v["best"]:
        return me
    p = "p -" if np.isnan(v["p"]) else f"p {v['p']:.2f}"
    return f"{v['delta']:+.4f} ({p}{', tied' if v['tied'] else ''})"


def _cell(mean: float, std: float, n: int, fmt: str) -> str:
    if np.isnan(mean):
        return "-"
    return f"{mean:{fmt}} ± {std:{fmt}}" if n > 1 else f"{mean:{fmt}}"


def _mb(x: float) -> float:
    return x / 1e6


LONG_HAUL_COLUMN = "long-haul"


def _tier_bytes(summary: dict) -> dict[str, float]:
    """'<tier> up' / '<tier> down' bytes of the tiers other than client-server (hierarchical methods), and the
    long-haul bytes (up and down over the links that reach the central server, whatever the method)."""
    by_tier = summary.get("bytes_by_tier", {})
    return {**{f"{t} {d}": v[d] for t, v in by_tier.items() if t != CLIENT_SERVER for d in ("up", "down")},
            LONG_HAUL_COLUMN: sum(v["up"] + v["down"] for t, v in by_tier.items() if t in LONG_HAUL)}


def write_report(out_dir: Path, title: str, runs: dict[str, dict[int, Path]], machine: str,
                 target: str | None = None) -> str:
    """runs: method label -> seed -> run folder (holding summary.json and rounds.jsonl). Returns the Markdown.

    Methods are sorted by their final headline metric, best first (its direction from the runs' summaries); every
    method of a comparison must be scored by the same metric. With ``target`` (a method label), a second table gives
    the rounds and bytes each method took to reach that method's final score.
    """
    summaries = {label: {seed: json.loads((d / "summary.json").read_text()) for seed, d in by_seed.items()}
                 for label, by_seed in runs.items()}
    metrics = {json.dumps(s["metric"], sort_keys=True) for by_seed in summaries.values() for s in by_seed.values()}
    if len(metrics) != 1:
        raise ValueError(f"the methods of '{title}' are scored by different metrics: {sorted(metrics)}")
    metric = json.loads(metrics.pop())
    name, higher = metric["name"], metric["higher_is_better"]
    tiers = sorted({k for by_seed in summaries.values() for s in by_seed.values() for k in _tier_bytes(s)}
                   - {LONG_HAUL_COLUMN})
    tiers += [LONG_HAUL_COLUMN] if tiers else []  # a hierarchy in the table: compare what reaches the server
    first = next(iter(next(iter(summaries.values())).values()))
    shown = list(dict.fromkeys(c for by_seed in summaries.values() for s in by_seed.values()
                               for c in s.get("report_columns", [])))  # a method without one shows '-'
    nan = float("nan")
    columns = ["final", "best", *shown, "bytes_up", "bytes_down", "wall_seconds"]
    rows, curves, bands, points, finals = [], {}, {}, {}, {}
    with open(out_dir / "report.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "seed", "status", "metric", "higher_is_better", *columns, *tiers])
        for label, by_seed in summaries.items():
            flat = {seed: {**dict.fromkeys(shown, nan), **dict.fromkeys(tiers, 0), **s, **s.get("final_scores", {}),
                           **_tier_bytes(s)}
                    for seed, s in by_seed.items()}
            for seed, f in flat.items():
                w.writerow([label, seed, f["status"], name, higher, *[f[c] for c in columns],
                            *[f[t] for t in tiers]])
            agg = aggregate(list(flat.values()), columns + tiers)
            rows.append((label, len(flat), agg))
            per_seed = [read_rounds(d) for d in runs[label].values()]
            per_seed = [[row for row in rows if row.get(name) is not None] for rows in per_seed]  # scored rounds
            n_rows = min(len(r) for r in per_seed)
            xs = [per_seed[0][i]["round"] for i in range(n_rows)]
            ys = np.array([[r[i][name] for i in range(n_rows)] for r in per_seed], dtype=float)
            mean, std = ys.mean(0), ys.std(0)
            curves[label] = (xs, mean.tolist())
            if len(per_seed) > 1:  # the spread over seeds, one standard deviation each side
                bands[label] = ((mean - std).tolist(), (mean + std).tolist())
            finals[label] = {seed: f["final"] for seed, f in flat.items()}
            points[label] = (agg["bytes_up"][0] + agg["bytes_down"][0], agg["final"][0])
    rows.sort(key=lambda r: -r[2]["final"][0] if higher else r[2]["final"][0])
    better = "higher" if higher else "lower"
    seeded = bool(rows) and max(n for _, n, _ in rows) > 1
    to_best = versus(finals, higher) if seeded else {}
    to_target = versus(finals, higher, target) if seeded and target in finals else {}
    lines = [
        f"# {title}",
        "",
        f"Machine: {machine}. Sorted by final {name} ({better} is better)"
        + ("; accuracy on the global test split" if name == "accuracy" else "")
        + "; bytes summed over all clients and rounds"
        + (f"; mean ± std over {rows[0][1]} seeds." if rows and rows[0][1] > 1 else ".")
        + (f" 'vs best': the mean paired difference in final {name} from the best method over the same seeds, "
           "its paired t-test p-value, and 'tied' where the seeds do not support the gap (within one std of the "
           f"best, or p >= {TIE_P})" + (f"; 'vs {target}' the same against {target}." if to_target else ".")
           if seeded else "")
        + (f" MB {LONG_HAUL_COLUMN}: up and down over the links that reach the central server ("
           + " and ".join(LONG_HAUL) + ")." if tiers else ""),
        "",
    ]
    header = ["method", f"final {name}", *(["vs best"] if to_best else []), *([f"vs {target}"] if to_target else []),
              f"best {name}", *shown, "MB up", "MB down", *(f"MB {t}" for t in tiers), "wall time (s)"]
    lines += markdown.table(header, (
        [label, _cell(*a["final"], n, ".4f"),
         *([_versus_cell(label, to_best[label])] if to_best else []),
         *([_versus_cell(label, to_target[label], "-")] if to_target else []),
         _cell(*a["best"], n, ".4f"), *(_cell(*a[c], n, ".4f") for c in shown),
         _cell(_mb(a["bytes_up"][0]), _mb(a["bytes_up"][1]), n, ".2f"),
         _cell(_mb(a["bytes_down"][0]), _mb(a["bytes_down"][1]), n, ".2f"),
         *(_cell(_mb(a[t][0]), _mb(a[t][1]), n, ".2f") for t in tiers), _cell(*a["wall_seconds"], n, ".1f")]
        for label, n, a in rows))
    if target is not None and target in summaries:
        lines += _target_table(runs, {seed: s["final"] for seed, s in summaries[target].items()}, target, name,
                               higher, [label for label, _, _ in rows])
    lines += _calibration(first, read_rounds(next(iter(next(iter(runs.values())).values()))), name)
    md = "\n".join(lines) + "\n"
    (out_dir / "report.md").write_text(md)
    ylabel = f"{name} ({better} is better)" + (" on the global test split" if name == "accuracy" else "")
    plot_lines(out_dir / f"{name}.png", curves, "round", ylabel,
               title + (f" (mean ± std over {rows[0][1]} seeds)" if seeded else ""), bands=bands)
    _plot_bytes(out_dir / f"bytes_vs_{name}.png", points, name, title)
    return md


def to_target(rows: list[dict], name: str, target: float, higher: bool) -> tuple[int, float] | None:
    """The first round whose score reaches ``target``, and the bytes (up + down) moved up to and including it (all
    traffic: round 0's partition query and any set-up exchange too); None if no round does."""
    moved = 0.0
    for r in rows:
        moved += r["bytes_up"] + r["bytes_down"]
        score = r.get(name)
        if score is not None and (score >= target if higher else score <= target):
            return r["round"], moved
    return None


def _target_table(runs: dict[str, dict[int, Path]], targets: dict[int, float], target: str, name: str,
                  higher: bool, order: list[str]) -> list[str]:
    lines = ["", f"Rounds and bytes to reach {target}'s final {name} of the same seed "
                 f"({', '.join(f'{targets[s]:.4f}' for s in sorted(targets))}); mean ± std over the seeds that "
                 "reach it; bytes are all traffic up to and including that round.", "",
             ]
    rows = []
    for label in order:
        seeds = [s for s in runs[label] if s in targets]
        hits = [h for s in seeds if (h := to_target(read_rounds(runs[label][s]), name, targets[s], higher))]
        rounds, mb = np.array([r for r, _ in hits], float), np.array([_mb(b) for _, b in hits])
        cells = [_cell(x.mean(), x.std(), len(hits), fmt) if hits else "-" for x, fmt in ((rounds, ".1f"), (mb, ".2f"))]
        rows.append([label, f"{len(hits)} of {len(seeds)}", *cells])
    return lines + markdown.table(["method", "seeds reaching it", "rounds", "MB (up + down)"], rows)


def _calibration(summary: dict, rows: list[dict], name: str) -> list[str]:
    """A generative score's scale: real vs real (its floor) and the untrained model's samples (round 0)."""
    ev = summary.get("evaluation")
    if not ev:
        return []
    floor = ev["floor_public_vs_test"][name]
    untrained = next((r[name] for r in rows if r["round"] == 0 and r.get(name) is not None), None)
    return ["", f"Scale of {name} ({ev['samples_per_class']} samples per class, {ev['sampling_steps']} DDIM steps, "
                f"against the global test split): real vs real (the public split) {floor:.2f}"
                + (f"; the untrained U-Net {untrained:.2f}" if untrained is not None else "")
                + f". The extractor's classifier reads {100 * ev['reference_test_accuracy']:.1f}% of the test split."]


def _plot_bytes(path: Path, points: dict[str, tuple[float, float]], metric: str, title: str) -> None:
    with figure(path) as (_, ax):
        for label, (nbytes, acc) in points.items():
            x = max(nbytes, 1.0)  # zero-byte reference runs sit at the left edge of the log axis
            ax.scatter([x], [acc], s=40)
            ax.annotate(label, (x, acc), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set(xlabel="total bytes exchanged (up + down, log; 1 = none)", ylabel=f"final {metric}", title=title)
        ax.grid(alpha=0.3)
