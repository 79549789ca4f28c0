import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("RAY_TMPDIR", "/tmp/fedgen-ray")
Path(os.environ["RAY_TMPDIR"]).mkdir(parents=True, exist_ok=True)
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

TIERS = ("unit", "integration", "statistical", "e2e", "bench", "tooling")
"""The test tiers (pyproject.toml's markers; the README's "Tests"). A test without a tier marker is a unit test."""
RUNS_ALONE = {"integration": "ray", "e2e": "processes"}
"""Tiers whose tests start Ray or a deployment sized for the whole machine: under pytest-xdist (--dist loadgroup) each
tier's tests go one after another on one worker, and the other tiers run beside them."""


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection reads the markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        tiers = [m.name for m in item.iter_markers() if m.name in TIERS]
        if len(tiers) > 1:
            raise pytest.UsageError(f"{item.nodeid} is marked with tiers {tiers}: a test belongs to one tier")
        tier = tiers[0] if tiers else "unit"
        if not tiers:
            item.add_marker(pytest.mark.unit)
        if tier in RUNS_ALONE:
            item.add_marker(pytest.mark.xdist_group(RUNS_ALONE[tier]))


if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch  # noqa: E402

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))  # two workers share the cores, not oversubscribe them

from fedgen.config import validate  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_defaults():
    """A test that ran with ``deterministic: true`` leaves torch's default algorithms to the next."""
    yield
    from fedgen.train import set_deterministic

    set_deterministic(False)


@pytest.fixture
def tiny_cfg():
    """A small, fast experiment on the embedded benchmark (3 clients, IID)."""

    def make(**sections):
        tree = {"name": "tiny", "rounds": 2, "data": {"num_clients": 3, "partition": {"kind": "iid"}}}
        for key, value in sections.items():
            if isinstance(value, dict):
                tree.setdefault(key, {}).update(value)
            else:
                tree[key] = value
        return validate(tree)

    return make


@pytest.fixture
def fedgen_run():
    """`fedgen run CONFIG --set ... --out OUT` in a subprocess (through Flower's simulation engine); returns the
    finished process, its exit status checked."""
    import subprocess

    def run(config: str, sets: list[str], out, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "simulations.cli", "run", config,
                               *[a for s in sets for a in ("--set", s)], "--out", str(out)],
                              capture_output=True, text=True, timeout=timeout, env={**os.environ})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    return run


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """A random tiny BLIP captioner (``blip/``) and SD-family pipeline (``sd/``), saved in Hugging Face format."""
    from fedgen.foundation.captions import vocabulary
    from fedgen.foundation.tiny import blip_captioner, blip_processor, clip_tokenizer, sd_pipeline

    root = tmp_path_factory.mktemp("models")
    processor = blip_processor(vocabulary(), 32)
    blip_captioner(processor, width=32).save_pretrained(root / "blip")
    processor.save_pretrained(root / "blip")
    texts = ["a red handwritten digit seven on a dark background",
             "a white handwritten digit one on a black background"]
    sd_pipeline(clip_tokenizer(texts * 5, max_length=16), 32).save_pretrained(root / "sd")
    return root
