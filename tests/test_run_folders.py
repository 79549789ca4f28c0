"""Nothing a user produced is overwritten without being asked: run folders, comparisons, atomic writes.

`fedgen compare`'s own logic (refusal, --resume, --overwrite, the chance check, one failing method not losing the
others, the --baseline gate) runs here with the simulation replaced by a recorder that writes a real run folder.
"""

import json
import os
from pathlib import Path

import pytest

from fedgen.comm import ByteLedger
from fedgen.config import ConfigError
from fedgen.results import RunFolderTaken, RunRecorder, claim_run_folder, replace_atomically, write_atomic
from fedgen.tasks import Headline
from simulations import cli, compare

ROOT = Path(__file__).resolve().parents[1]
ACCURACY = {"fedavg": 0.8, "fedprox": 0.05}
"""What the stand-in simulation scores each strategy (FedProx at chance); SCAFFOLD fails."""


def _fake_run(calls):
    def run(cfg, run_dir, verbose=False, resume=False, overwrite=False):
        claim_run_folder(run_dir, resume, overwrite)
        calls.append((cfg.strategy.name, Path(run_dir).name, resume))
        recorder = RunRecorder(run_dir, cfg, ByteLedger(), Headline("accuracy"), ("accuracy", "loss"))
        if cfg.strategy.name == "scaffold":  # fails after writing its folder, before any checkpoint
            recorder.finish("failed")
            raise RuntimeError("the simulation broke")
        recorder.record_round(1, {"accuracy": ACCURACY[cfg.strategy.name], "loss": 1.0}, {})
        return recorder.finish("finished")

    return run


@pytest.fixture
def suite(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(f"name: t\nbase: {ROOT / 'simulations/configs/digits_domains.yaml'}\nseeds: [0, 1]\nmethods:\n"
                    "  FedAvg: [strategy.name=fedavg, rounds=1]\n  FedProx: [strategy.name=fedprox, rounds=1]\n"
                    "  SCAFFOLD: [strategy.name=scaffold, rounds=1]\n")
    return path


def test_compare_keeps_the_others_checks_chance_and_refuses_to_overwrite(suite, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(compare, "run", _fake_run(calls))
    out = tmp_path / "cmp"
    assert compare.compare(suite, out, check=True) == 1
    printed = capsys.readouterr().out
    assert "PROBLEM: SCAFFOLD seed 0: failed: the simulation broke" in printed  # one failing method ...
    assert "PROBLEM: FedProx seed 1: final accuracy 0.0500 is at chance" in printed
    report = (out / "report.csv").read_text()
    assert "FedAvg" in report and "FedProx" in report  # ... loses none of the others
    first = (out / "FedAvg" / "seed0" / "summary.json").read_bytes()

    calls.clear()  # the same comparison again: refused before any run, naming every taken folder and the ways on
    with pytest.raises(RunFolderTaken, match=r"(?s)FedAvg/seed0 \(finished, 1 rounds\).*--resume.*--overwrite"):
        compare.compare(suite, out)
    assert calls == [] and (out / "FedAvg" / "seed0" / "summary.json").read_bytes() == first

    assert compare.compare(suite, out, resume=True) == 1  # finished runs kept, the failed ones started again
    assert sorted(calls) == [("scaffold", "seed0", False), ("scaffold", "seed1", False)]
    assert (out / "FedAvg" / "seed0" / "summary.json").read_bytes() == first

    with pytest.raises(RunFolderTaken, match=r"--resume: .*FedAvg/seed0 was run with other settings"):
        compare.compare(suite, out, resume=True, overrides=["rounds=3"])

    calls.clear()
    assert compare.compare(suite, out, overwrite=True) == 1
    assert len(calls) == 6


def test_compare_gates_on_a_baseline(suite, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compare, "run", _fake_run([]))
    compare.compare(suite, tmp_path / "a")
    baseline = tmp_path / "a" / "report.csv"
    capsys.readouterr()
    compare.compare(suite, tmp_path / "b", baseline=baseline)  # the same scores (SCAFFOLD fails in both)
    assert "PROBLEM: regressed against" not in capsys.readouterr().out
    ACCURACY["fedavg"] = 0.6
    try:
        assert compare.compare(suite, tmp_path / "c", baseline=baseline) == 1
    finally:
        ACCURACY["fedavg"] = 0.8
    assert f"PROBLEM: regressed against {baseline}" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="no report at"):  # a missing baseline fails before any run
        compare.compare(suite, tmp_path / "d", baseline=tmp_path / "missing.csv")
    assert not (tmp_path / "d").exists()


def test_fedgen_run_refuses_a_folder_holding_a_run_before_any_work(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("mine\n")
    (run_dir / "summary.json").write_text(json.dumps({"status": "finished", "rounds": 7}))
    code = cli.main(["run", str(ROOT / "simulations/configs/digits_domains.yaml"), "--out", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 2 and f"{run_dir} holds a run already (finished, 7 rounds)" in err
    assert f"fedgen run --resume {run_dir}" in err and "--overwrite" in err
    assert (run_dir / "config.yaml").read_text() == "mine\n"
    assert cli.main(["run", "--resume", str(tmp_path / "nothing")]) == 2  # nothing to resume: refused too
    assert "config file not found" in capsys.readouterr().err


def test_claiming_a_folder(tmp_path, monkeypatch):
    claim_run_folder(tmp_path / "new")  # new or empty: fine
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a run")
    claim_run_folder(tmp_path / "other")
    (tmp_path / "other" / "config.yaml").write_text("a config of the user's, not a run")
    claim_run_folder(tmp_path / "other")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "rounds.jsonl").write_text("")  # a run that ended before its first round
    with pytest.raises(ConfigError, match="holds a run already"):
        claim_run_folder(run_dir)
    (tmp_path / "latest").symlink_to(run_dir)
    claim_run_folder(tmp_path / "latest", overwrite=True)  # through a link: the run folder itself goes
    assert not run_dir.exists()
    (tmp_path / "summary.json").write_text("{}")
    monkeypatch.chdir(run_dir.parent / "other")
    with pytest.raises(ConfigError, match="holds the working directory"):
        claim_run_folder(tmp_path, overwrite=True)
    assert (tmp_path / "other" / "notes.txt").exists()
    with pytest.raises(ConfigError, match="nothing to resume"):
        claim_run_folder(tmp_path / "other", resume=True)


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_atomic(path, "old")

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(path, broken)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    write_atomic(path, "new")
    assert path.read_text() == "new" and len(synced) == 2  # the file before the rename, then the folder
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as any file the user writes, not mkstemp's 0600
