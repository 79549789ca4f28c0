import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("RAY_TMPDIR", "/tmp/fedgen-ray")
Path(os.environ["RAY_TMPDIR"]).mkdir(parents=True, exist_ok=True)
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

from fedgen.config import validate  # noqa: E402


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
