"""Corrupted checkpoints are a clear error, never a silent load, and loading runs no pickled code."""

from __future__ import annotations

import shutil

import pytest
import torch

from sgrec_ray.errors import CheckpointError, is_user_error
from sgrec_ray.generator.model import load_generator
from sgrec_ray.ray_train import load_state


class _Payload:
    """Unpickling this would call print(): what a tampered checkpoint could do with os.system."""

    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_training_state_loads_tensors_and_values(tmp_path):
    path = str(tmp_path / "state.pt")
    torch.save({"step": 3, "optim": {"state": {0: {"exp_avg": torch.ones(2)}}}, "log": [1.5]}, path)
    state = load_state(path)
    assert state["step"] == 3 and torch.equal(state["optim"]["state"][0]["exp_avg"], torch.ones(2))


@pytest.mark.parametrize("kind", ["truncated", "garbage", "pickled_code"])
def test_a_bad_training_state_is_a_clear_error(tmp_path, capsys, kind):
    path = tmp_path / "state.pt"
    torch.save({"step": 3, "weights": torch.randn(64, 64)}, str(path))
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "garbage":
        path.write_bytes(b"not a checkpoint at all" * 10)
    else:
        torch.save({"step": 3, "payload": _Payload()}, str(path))
    with pytest.raises(CheckpointError, match=r"state\.pt: cannot load") as err:
        load_state(str(path))
    assert is_user_error(err.value)
    assert "pickled code ran" not in capsys.readouterr().out


def test_a_corrupted_generator_checkpoint_is_a_clear_error(tiny_run, tmp_path):
    good = tiny_run.require("sft")["outputs"]["model"]
    bad = tmp_path / "model"
    shutil.copytree(good, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a torn upload
    with pytest.raises(CheckpointError, match=r"generator checkpoint .*: cannot load it"):
        load_generator(str(bad))
    assert load_generator(good).meta.n_items > 0  # the good one still loads
