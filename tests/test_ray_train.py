"""The one way into a Ray Train worker: a loop takes one typed argument (issue 27)."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from typing import Any

import pytest

from sgrec_ray import ray_train
from sgrec_ray.align.train import train_loop as align_loop
from sgrec_ray.config import SftSection
from sgrec_ray.generator.sft import _train_loop as sft_loop
from sgrec_ray.judge.aggregate import train_loop as aggregate_loop
from sgrec_ray.rl.a2po import _train_loop as a2po_loop
from sgrec_ray.rl.ranker import _train_loop as ranker_loop
from sgrec_ray.sasrec.stage import _train_loop as sasrec_loop

LOOPS: list[Callable[..., None]] = [
    sft_loop, a2po_loop, sasrec_loop, ranker_loop, align_loop, aggregate_loop
]  # fmt: skip


@pytest.mark.parametrize("loop", LOOPS, ids=lambda f: f.__module__)
def test_every_loop_takes_one_frozen_dataclass(loop: Callable[..., None]) -> None:
    """A loop reads ``args.section.field`` (a type checker sees it), never ``config["key"]``."""
    (name,) = inspect.signature(loop).parameters
    kind = typing.get_type_hints(loop)[name]
    assert dataclasses.is_dataclass(kind) and kind.__dataclass_params__.frozen  # type: ignore[attr-defined]
    source = inspect.getsource(loop)
    assert "config[" not in source and "config.get(" not in source


@dataclasses.dataclass(frozen=True)
class _Args:
    sft: SftSection
    seed: int


def test_make_trainer_hands_ray_one_parameter_and_the_loop_its_typed_args(tmp_path) -> None:
    seen: list[Any] = []
    args = _Args(SftSection(lr=0.5), seed=7)
    trainer = ray_train.make_trainer(
        seen.append, args, SftSection(), name="run", storage_path=str(tmp_path)
    )
    # Ray Train calls its loop with the config dict when the loop has one required parameter.
    assert len(inspect.signature(trainer.train_loop_per_worker).parameters) == 1
    trainer.train_loop_per_worker(trainer.train_loop_config)
    assert seen == [args] and seen[0].sft.lr == 0.5


def test_failure_point_reads_the_drivers_environment(monkeypatch) -> None:
    monkeypatch.delenv("SGREC_TEST_FAIL_X", raising=False)
    assert ray_train.failure_point("SGREC_TEST_FAIL_X") is None
    monkeypatch.setenv("SGREC_TEST_FAIL_X", "")
    assert ray_train.failure_point("SGREC_TEST_FAIL_X") is None
    monkeypatch.setenv("SGREC_TEST_FAIL_X", "2")
    assert ray_train.failure_point("SGREC_TEST_FAIL_X") == 2


def test_a_fresh_run_deletes_that_runs_earlier_checkpoints_only(tmp_path, monkeypatch) -> None:
    """``--force``: the named run starts over; other runs in the same folder stay."""
    for run in ("old", "other"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "checkpoint").write_text("x")
    started: list[str] = []

    class _Done:
        checkpoint = "ckpt"

    monkeypatch.setattr(ray_train, "fit", lambda trainer, what: started.append(what) or _Done())
    result = ray_train.run_trainer(
        print, None, SftSection(), storage_path=str(tmp_path), run_name="old", fresh=True,
        what="test run", banner="[test] banner",
    )  # fmt: skip
    assert result.checkpoint == "ckpt" and started == ["test run"]
    assert not (tmp_path / "old").exists() and (tmp_path / "other" / "checkpoint").exists()
