"""A run's checkpoint is read as tensors and plain data only: a file that would run code when unpickled is refused."""

import os
import random

import numpy as np
import pytest
import torch

from fedgen import checkpoint


class RunsCode:
    def __reduce__(self):
        return os.system, ("touch ran",)


def test_a_checkpoint_as_save_writes_it_loads_with_its_rng(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = {"round": 2, "arrays": {"w": torch.arange(3.0)}, "strategy": {"aggregated": {0: 2}, "h": [1.5]},
             "rng": checkpoint.rng_state(), "ledger": [{"round": 1, "kind": "up"}], "failures": [],
             "wall_seconds": 1.0}
    checkpoint.save(tmp_path, state)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    loaded = checkpoint.load(tmp_path)
    assert loaded["round"] == 2 and torch.equal(loaded["arrays"]["w"], state["arrays"]["w"])
    assert loaded["strategy"] == state["strategy"] and loaded["ledger"] == state["ledger"]
    checkpoint.set_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_a_checkpoint_holding_an_arbitrary_object_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"round": 1, "strategy": RunsCode()}, tmp_path / checkpoint.CHECKPOINT)
    refused = r"holds more than tensors and plain data: refused.*\(Trying to load unsupported GLOBAL posix.system"
    with pytest.raises(ValueError, match=refused):
        checkpoint.load(tmp_path)
    assert not (tmp_path / "ran").exists()
    torch.save({"round": 1, "strategy": {"moments": np.zeros(2, np.float32)}}, tmp_path / checkpoint.CHECKPOINT)
    with pytest.raises(ValueError, match="but got <class 'numpy.dtypes.Float32DType'>"):  # the RNG's numpy types only
        checkpoint.load(tmp_path)
