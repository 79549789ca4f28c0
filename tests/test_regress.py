"""The regression gate (`fedgen compare --baseline`, `fedgen diff`); the workflow running it: tests/test_tooling.py."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from inprocess import InProcessGrid

from fedgen.config import ConfigError
from fedgen.regress import diff, gate, read_report
from fedgen.report import write_report
from simulations.server_app import run_experiment

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["method", "seed", "status", "metric", "higher_is_better", "final", "best", "bytes_up", "bytes_down",
           "wall_seconds"]


def _csv(path: Path, rows: list[tuple], metric: str = "accuracy", higher: bool = True) -> Path:
    """rows: (method, seed, status, final, bytes_up, wall)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for method, seed, status, final, up, wall in rows:
            w.writerow([method, seed, status, metric, higher, final, final, up, up, wall])
    return path


def test_a_worse_score_beyond_the_tolerance_regresses_and_is_named(tmp_path):
    old = _csv(tmp_path / "old.csv", [("FedAvg", 0, "finished", 0.80, 1e6, 10),
                                      ("FedDyn", 0, "finished", 0.88, 1e6, 10)])
    new = _csv(tmp_path / "new.csv", [("FedAvg", 0, "finished", 0.70, 1e6, 30),
                                      ("FedDyn", 0, "finished", 0.87, 1e6, 9)])
    passed, md = gate(old, new, tmp_path / "diff.md", tolerance=0.02)
    assert not passed and (tmp_path / "diff.md").read_text() == md
    [fedavg] = [ln for ln in md.splitlines() if ln.startswith("| FedAvg")]
    assert "-0.1000" in fedavg and "REGRESSED: accuracy -0.1000 (allowed 0.0200)" in fedavg
    [feddyn] = [ln for ln in md.splitlines() if ln.startswith("| FedDyn")]
    assert feddyn.endswith("| ok |")  # 0.01 worse: inside the tolerance
    assert "+200.0%" in fedavg  # wall time is shown, and not gated by default
    assert diff(read_report(old), read_report(new), 0.02, time_tolerance=0.5)[0].regressions[-1] == "wall time +200%"


def test_lower_is_better_for_fid_and_the_seeds_spread_widens_the_tolerance(tmp_path):
    old = _csv(tmp_path / "old.csv", [("MOON", 0, "finished", 150, 1e6, 1), ("MOON", 1, "finished", 170, 1e6, 1)],
               metric="fid", higher=False)
    a = _csv(tmp_path / "a.csv", [("MOON", 0, "finished", 160, 1e6, 1), ("MOON", 1, "finished", 180, 1e6, 1)],
             metric="fid", higher=False)  # +10 FID, inside the old seeds' std of 10
    assert gate(old, a, tmp_path / "a.md", tolerance=1)[0]
    b = _csv(tmp_path / "b.csv", [("MOON", 0, "finished", 130, 1e6, 1), ("MOON", 1, "finished", 150, 1e6, 1)],
             metric="fid", higher=False)  # lower FID is better: no regression at all
    assert gate(old, b, tmp_path / "b.md", tolerance=1)[0]
    c = _csv(tmp_path / "c.csv", [("MOON", 0, "finished", 175, 1e6, 1), ("MOON", 1, "finished", 185, 1e6, 1)],
             metric="fid", higher=False)  # +20: beyond the spread
    passed, md = gate(old, c, tmp_path / "c.md", tolerance=1)
    assert not passed and "fid +20.0000 (allowed 10.0000)" in md


def test_missing_failed_new_and_heavier_methods(tmp_path):
    old = _csv(tmp_path / "old.csv", [("A", 0, "finished", 0.8, 1e6, 1), ("B", 0, "finished", 0.8, 1e6, 1),
                                      ("C", 0, "finished", 0.8, 1e6, 1)])
    new = _csv(tmp_path / "new.csv", [("A", 0, "failed", 0.8, 1e6, 1), ("C", 0, "finished", 0.8, 1.1e6, 1),
                                      ("D", 0, "finished", 0.5, 1e6, 1)])
    verdicts = {d.method: d.verdict for d in diff(read_report(old), read_report(new), 0.02)}
    assert verdicts == {"A": "REGRESSED: seed(s) [0] did not finish", "B": "REGRESSED: missing from the new report",
                        "C": "REGRESSED: bytes +10.0%", "D": "new"}
    local = _csv(tmp_path / "local.csv", [("L", 0, "finished", 0.6, 0, 1)])
    chatty = _csv(tmp_path / "chatty.csv", [("L", 0, "failed", "None", 2e6, 1)])  # starts sending, ends unscored
    [d] = diff(read_report(local), read_report(chatty), 0.02)
    assert d.regressions == ["seed(s) [0] did not finish", "no final accuracy for seed(s) [0]", "bytes 0 -> 4.00 MB"]
    fid = _csv(tmp_path / "fid.csv", [("A", 0, "finished", 100, 1e6, 1)], metric="fid", higher=False)
    with pytest.raises(ValueError, match="different metrics"):
        diff(read_report(old), read_report(fid), 0.02)
    (tmp_path / "old-format.csv").write_text("method,seed,status,metric,final\nA,0,finished,accuracy,0.8\n")
    with pytest.raises(ValueError, match="no column .*higher_is_better"):
        read_report(tmp_path / "old-format.csv")
    with pytest.raises(ConfigError, match="no report at"):
        read_report(tmp_path / "nope.csv")
    proc = subprocess.run([sys.executable, "-m", "simulations.cli", "diff", str(tmp_path / "nope.csv"), str(old)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "fedgen: no report at" in proc.stderr and "Traceback" not in proc.stderr


def test_an_unscored_or_failed_method_in_either_report_fails_the_gate_and_is_named(tmp_path):
    """NaN compares false with everything: a NaN or empty score, or a failed run, in the baseline or in the new
    report, is a regression of its own, named in the Markdown's row and in its summary line."""
    scored = _csv(tmp_path / "scored.csv", [("A", 0, "finished", 0.8, 1e6, 1), ("B", 0, "finished", 0.8, 1e6, 1),
                                            ("B", 1, "finished", 0.8, 1e6, 1), ("C", 0, "finished", 0.8, 1e6, 1)])
    unscored = _csv(tmp_path / "unscored.csv", [("A", 0, "finished", "nan", 1e6, 1),
                                                ("B", 0, "finished", 0.8, 1e6, 1), ("B", 1, "finished", "", 1e6, 1),
                                                ("C", 0, "failed", 0.8, 1e6, 1), ("N", 0, "finished", "nan", 1e6, 1)])
    for old, new, whose in ((scored, unscored, ""), (unscored, scored, "baseline: "), (unscored, unscored, None)):
        passed, md = gate(old, new, tmp_path / "diff.md")
        assert not passed and "regression(s): A, B, C, N." in md, md
        rows = {ln.split(" | ")[0][2:]: ln for ln in md.splitlines() if ln.startswith("| ")}
        for w in ("", "baseline: ") if whose is None else (whose,):
            assert f"{w}no final accuracy for seed(s) [0]" in rows["A"], rows["A"]
            assert f"{w}no final accuracy for seed(s) [1]" in rows["B"]
            assert f"{w}seed(s) [0] did not finish" in rows["C"]
    assert "REGRESSED: no final accuracy for seed(s) [0]" in rows["N"]  # a new method, unscored


@pytest.mark.statistical
def test_a_strategy_worsened_by_a_learning_rate_of_almost_zero_fails_the_gate(tiny_cfg, tmp_path):
    """Real runs, real reports: FedAvg as it is is the baseline; the same FedAvg with lr 1e-9 fails against it, and
    `fedgen diff` exits 1 naming the method and the delta."""
    from clients.app import app

    for name, train in (("good", {}), ("worse", {"lr": 1e-9})):
        cfg = tiny_cfg(rounds=2, train=train)
        run_experiment(InProcessGrid(app, 3), cfg, tmp_path / name / "run")
        write_report(tmp_path / name, "ci", {"FedAvg": {0: tmp_path / name / "run"}}, "test machine")
    proc = subprocess.run([sys.executable, "-m", "simulations.cli", "diff", str(tmp_path / "good" / "report.csv"),
                           str(tmp_path / "worse" / "report.csv")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [row] = [ln for ln in proc.stdout.splitlines() if ln.startswith("| FedAvg")]
    good = read_report(tmp_path / "good" / "report.csv").runs["FedAvg"][0]["final"]
    worse = read_report(tmp_path / "worse" / "report.csv").runs["FedAvg"][0]["final"]
    assert good - worse > 0.2 and f"{worse - good:+.4f}" in row and "REGRESSED" in row
    assert (tmp_path / "worse" / "diff.md").read_text() == proc.stdout[:-1]
    same = subprocess.run([sys.executable, "-m", "simulations.cli", "diff", str(tmp_path / "good" / "report.csv"),
                           str(tmp_path / "good" / "report.csv")], capture_output=True, text=True, cwd=ROOT)
    assert same.returncode == 0 and "No regression." in same.stdout


def test_the_ci_baselines_are_reports_of_the_ci_suites():
    from fedgen.config import load_suite

    for suite, baseline in (("suite_ci.yaml", "ci.csv"), ("suite_ci_diffusion.yaml", "ci-diffusion.csv"),
                            ("suite_ci_longtail.yaml", "ci-longtail.csv")):
        report = read_report(ROOT / "docs" / "ci-baseline" / baseline)
        _, configs = load_suite(ROOT / "simulations" / "configs" / suite)
        assert set(report.runs) == set(configs), suite  # a method added to a CI suite needs a new baseline
        assert all(r["status"] == "finished" for rows in report.runs.values() for r in rows)
