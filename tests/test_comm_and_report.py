import csv
import json

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedgen.comm import DOWN, UP, ByteLedger, record_bytes
from fedgen.report import aggregate, to_target, write_report


def test_record_bytes_counts_payload_and_keys():
    arr = np.zeros((10, 10), dtype=np.float32)
    content = RecordDict({"arrays": ArrayRecord([arr]), "metrics": MetricRecord({"num-examples": 5})})
    n = record_bytes(content)
    assert 400 < n < 700  # 400 bytes of float32 plus a small numpy header, the keys and one 8-byte scalar
    bigger = RecordDict({"arrays": ArrayRecord([np.zeros((20, 10), dtype=np.float32)]),
                         "metrics": MetricRecord({"num-examples": 5})})
    assert record_bytes(bigger) - n == 400
    assert record_bytes(RecordDict({"config": ConfigRecord({"x": "abcd"})})) == len("config") + 1 + 4


def test_ledger_totals_by_round_client_and_direction():
    ledger = ByteLedger()
    ledger.add(1, 0, UP, 100)
    ledger.add(1, 1, UP, 50)
    ledger.add(1, 0, DOWN, 70)
    ledger.add(2, 0, UP, 10, tier="edge-cloud")
    assert ledger.total(UP) == 160 and ledger.total(UP, round=1) == 150 and ledger.total(DOWN) == 70
    assert ledger.total(UP, tier="edge-cloud") == 10
    assert ledger.per_client(UP) == {0: 110, 1: 50}
    assert ledger.per_client(UP, first_round=2) == {0: 10}
    with pytest.raises(ValueError):
        ledger.add(1, 0, "sideways", 1)
    with pytest.raises(ValueError):
        ledger.add(1, 0, UP, -1)


def test_aggregate_over_seeds():
    agg = aggregate([
        {"final": 0.5, "best": 0.6, "bytes_up": 10, "bytes_down": 20, "wall_seconds": 1},
        {"final": 0.7, "best": 0.8, "bytes_up": 10, "bytes_down": 20, "wall_seconds": 3},
    ], ["final", "bytes_up"])
    assert agg["final"] == pytest.approx((0.6, 0.1)) and set(agg) == {"final", "bytes_up"}
    assert agg["bytes_up"] == (10.0, 0.0)


def test_report_from_run_folders(tmp_path):
    runs = {}
    for label, acc in [("A", 0.5), ("B", 0.9)]:
        runs[label] = {}
        for seed in (0, 1):
            d = tmp_path / label / f"seed{seed}"
            d.mkdir(parents=True)
            summary = {"status": "finished", "metric": {"name": "accuracy", "higher_is_better": True},
                       "final": acc + seed / 100, "best": acc + 0.05, "bytes_up": 1e6, "bytes_down": 2e6,
                       "wall_seconds": 10.0, "bytes_by_tier": {"client-server": {"up": 1e6, "down": 2e6}}}
            (d / "summary.json").write_text(json.dumps(summary))
            rows = [{"round": r, "accuracy": acc * r / 2, "bytes_up": 1, "bytes_down": 1} for r in range(3)]
            (d / "rounds.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
            runs[label][seed] = d
    md = write_report(tmp_path, "demo", runs, "test machine")
    assert "| B | 0.9050 ± 0.0050 | best |" in md and "mean ± std over 2 seeds" in md
    assert "| A | 0.5050 ± 0.0050 | -0.4000 (p 0.00) |" in md  # the same gap on both seeds: not tied
    assert md.index("| B |") < md.index("| A |")  # sorted by final accuracy, best first
    assert "| method | final accuracy | vs best | best accuracy | MB up | MB down | wall time (s) |" in md
    for name in ("report.md", "report.csv", "accuracy.png", "bytes_vs_accuracy.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert len((tmp_path / "report.csv").read_text().splitlines()) == 5
    md = write_report(tmp_path, "demo", runs, "test machine", target="A")  # and against the suite's target
    assert "| B | 0.9050 ± 0.0050 | best | +0.4000 (p 0.00) |" in md
    assert "| A | 0.5050 ± 0.0050 | -0.4000 (p 0.00) | - |" in md


def test_a_flat_and_a_hierarchical_method_in_one_report_compare_their_long_haul_bytes(tmp_path):
    tiers = {"Flat": {"client-server": {"up": 4e6, "down": 4e6}},
             "Tiers": {"client-server": {"up": 0, "down": 0}, "client-edge": {"up": 4e6, "down": 4e6},
                       "edge-cloud": {"up": 1e6, "down": 2e6}}}
    runs = {}
    for label, by_tier in tiers.items():
        d = tmp_path / label
        d.mkdir()
        up, down = (sum(v[k] for v in by_tier.values()) for k in ("up", "down"))
        (d / "summary.json").write_text(json.dumps({
            "status": "finished", "metric": {"name": "fid", "higher_is_better": False}, "final": 10.0, "best": 9.0,
            "bytes_up": up, "bytes_down": down, "wall_seconds": 1.0, "bytes_by_tier": by_tier}))
        (d / "rounds.jsonl").write_text(json.dumps({"round": 1, "fid": 10.0}))
        runs[label] = {0: d}
    md = write_report(tmp_path, "tiers", runs, "here")
    assert ("| MB up | MB down | MB client-edge down | MB client-edge up | MB edge-cloud down | MB edge-cloud up "
            "| MB long-haul |") in md
    assert "| Flat | 10.0000 | 9.0000 | 4.00 | 4.00 | 0.00 | 0.00 | 0.00 | 0.00 | 8.00 |" in md  # its client-server
    assert "| Tiers | 10.0000 | 9.0000 | 5.00 | 6.00 | 4.00 | 4.00 | 2.00 | 1.00 | 3.00 |" in md  # its edge-cloud
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [r["long-haul"] for r in rows] == ["8000000.0", "3000000.0"]


def test_rounds_and_bytes_to_a_target_count_all_traffic_up_to_that_round(tmp_path):
    rows = [{"round": 0, "accuracy": 0.1, "bytes_up": 5, "bytes_down": 1},
            {"round": 1, "accuracy": None, "bytes_up": 10, "bytes_down": 10},
            {"round": 2, "accuracy": 0.8, "bytes_up": 10, "bytes_down": 10}]
    assert to_target(rows, "accuracy", 0.8, higher=True) == (2, 46)
    assert to_target(rows, "accuracy", 0.1, higher=True) == (0, 6)  # reached before any training round
    assert to_target(rows, "accuracy", 0.9, higher=True) is None
    assert to_target(rows, "accuracy", 0.5, higher=False) == (0, 6)
    runs = {}
    for label, curve in [("Ref", [0.1, 0.5, 0.6]), ("Fast", [0.7, 0.8, 0.9])]:
        d = tmp_path / label
        d.mkdir()
        summary = {"status": "finished", "metric": {"name": "accuracy", "higher_is_better": True},
                   "final": curve[-1], "best": max(curve), "bytes_up": 3e6, "bytes_down": 3e6, "wall_seconds": 1.0}
        (d / "summary.json").write_text(json.dumps(summary))
        (d / "rounds.jsonl").write_text("\n".join(json.dumps({"round": r, "accuracy": a, "bytes_up": 1e6,
                                                               "bytes_down": 1e6}) for r, a in enumerate(curve)))
        runs[label] = {0: d}
    md = write_report(tmp_path, "t", runs, "m", target="Ref")
    assert "| Fast | 1 of 1 | 0.0 | 2.00 |" in md and "| Ref | 1 of 1 | 2.0 | 6.00 |" in md


def test_a_column_only_some_methods_report_shows_a_dash_for_the_others(tmp_path):
    """FedDF's groups report their accuracy beside the headline; a single-model method in the same table has none."""
    runs = {}
    for label, extra in (("FedAvg", {}), ("FedDF", {"accuracy-cnn": 0.7, "accuracy-resnet8": 0.6})):
        d = tmp_path / label
        d.mkdir()
        summary = {"status": "finished", "metric": {"name": "accuracy", "higher_is_better": True},
                   "report_columns": list(extra), "final": 0.65, "best": 0.65, "final_scores": extra,
                   "bytes_up": 1e6, "bytes_down": 1e6, "wall_seconds": 1.0}
        (d / "summary.json").write_text(json.dumps(summary))
        (d / "rounds.jsonl").write_text(json.dumps({"round": 0, "accuracy": 0.1}))
        runs[label] = {0: d}
    md = write_report(tmp_path, "mixed", runs, "test machine")
    assert "| method | final accuracy | best accuracy | accuracy-cnn | accuracy-resnet8 | MB up |" in md
    assert "| FedAvg | 0.6500 | 0.6500 | - | - |" in md and "| FedDF | 0.6500 | 0.6500 | 0.7000 | 0.6000 |" in md


def test_versus_marks_gaps_the_seeds_do_not_support():
    from fedgen.report import versus

    finals = {"A": {0: 0.80, 1: 0.82, 2: 0.84},
              "B": {0: 0.70, 1: 0.71, 2: 0.73},  # 0.10-0.11 below A on every seed
              "C": {0: 0.79, 1: 0.85, 2: 0.80}}  # 0.007 below A on average, either side seed by seed
    v = versus(finals, higher=True)
    assert {x["best"] for x in v.values()} == {"A"} and not v["A"]["tied"]
    d = np.array([-0.10, -0.11, -0.11])  # the paired t statistic by hand: mean / (sample std / sqrt(n)), 2 dof
    t = d.mean() / (d.std(ddof=1) / np.sqrt(3))
    assert t == pytest.approx(-32.0) and v["B"]["delta"] == pytest.approx(d.mean())
    assert v["B"]["p"] == pytest.approx(1 - 32 / np.sqrt(2 + 32**2), rel=1e-3)  # Student t, 2 dof, two-sided
    assert not v["B"]["tied"]
    assert v["C"]["tied"] and v["C"]["p"] > 0.5
    # lower is better: the best is the lowest mean; one common seed gives no test, so no gap counts as supported
    v = versus({"X": {0: 10.0, 1: 12.0}, "Y": {0: 30.0}}, higher=False)
    assert v["X"]["best"] == "X" and np.isnan(v["Y"]["p"]) and v["Y"]["tied"] and v["Y"]["seeds"] == 1
    # the same gap on every seed: no spread to test, p 0
    v = versus({"X": {0: 0.5, 1: 0.6}, "Y": {0: 0.4, 1: 0.5}}, higher=True)
    assert v["Y"]["p"] == 0.0 and v["Y"]["delta"] == pytest.approx(-0.1) and not v["Y"]["tied"]
    v = versus(finals, higher=True, reference="C")  # against a named method (the suite's target) instead
    assert v["C"]["best"] == "C" and v["A"]["delta"] == pytest.approx(0.82 - 0.8133, abs=1e-4) and v["A"]["tied"]
    assert v["B"]["delta"] < 0 and v["B"]["seeds"] == 3
