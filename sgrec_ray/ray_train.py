"""Ray Train plumbing shared by every trainer here (SFT, A2PO, ranker, Stage B aggregator).

One place for the three things each of them needs and that are easy to get subtly wrong: a
``TorchTrainer`` built from the fields every trainer section of the config has, a finished run that
must have produced a checkpoint, and reading a checkpoint on a worker without racing the other ranks.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pyarrow.fs as pafs
import ray.train
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, Result, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from sgrec_ray.errors import CheckpointError


class Workers(Protocol):
    """The fields every trainer's config section has (sft, rl, ranker, aggregate)."""

    num_workers: int
    cpus_per_worker: float
    max_failures: int


def load_state(path: str) -> Any:
    """A training state (optimizer, scheduler, step, log) saved with ``torch.save``.

    ``weights_only=True``: unpickling runs no code from the file, so a tampered checkpoint in a
    shared bucket cannot execute anything; tensors, dicts, lists and numbers load as before, and
    so do numpy arrays and scalars (states carry them: token maps, reward histories), whose
    constructors are allow-listed as data (:func:`numpy_globals`), not as code.
    """
    import torch

    try:
        with torch.serialization.safe_globals(numpy_globals()):
            return torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise CheckpointError(
            f"{path}: cannot load this training state ({type(err).__name__}: {err}); the "
            "checkpoint is corrupted or incomplete: delete it to start that training afresh"
        ) from err


def numpy_globals() -> list[Any]:
    """The names a pickled numpy array or scalar refers to: its rebuild function, ndarray, dtype
    and every concrete dtype class. All build plain data; none runs code from the file."""
    import numpy as np

    codes = [*"?bhilqBHILQefdgFDGUS", "M8[ns]", "m8[ns]"]  # every kind but object ("O")
    dtypes = {type(np.dtype(c)) for c in codes}
    return [np._core.multiarray._reconstruct, np._core.multiarray.scalar, np.ndarray, np.dtype,
            *dtypes]  # fmt: skip


def make_trainer(
    loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    workers: Workers,
    *,
    name: str,
    storage_path: str,
    datasets: dict[str, Any] | None = None,
    num_to_keep: int | None = None,
    keep_best: str | None = None,
) -> TorchTrainer:
    """A ``TorchTrainer`` whose run lives at ``storage_path/name`` (so a rerun with that name resumes).

    ``workers`` is the trainer's config section; ``use_gpu`` is read when the section has it.
    ``keep_best``: a reported metric (higher is better) that decides which ``num_to_keep``
    checkpoints survive; Ray always keeps the latest one too, which is what a resume reads.
    """
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=workers.num_workers,
            use_gpu=bool(getattr(workers, "use_gpu", False)),
            resources_per_worker={"CPU": workers.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=workers.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=num_to_keep,
                checkpoint_score_attribute=keep_best,
                checkpoint_score_order="max",
            ),
        ),
        datasets=datasets,
    )


def fit(trainer: TorchTrainer, what: str) -> Result:
    """``trainer.fit()``, failing loudly when the run ended without a checkpoint to export."""
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{what}: training finished without a checkpoint ({result.error})")
    return result


@contextlib.contextmanager
def checkpoint_dir(checkpoint: Checkpoint) -> Iterator[str]:
    """A local directory holding ``checkpoint``, private to this process.

    ``Checkpoint.as_directory`` downloads a remote checkpoint into one temp dir shared by every
    process on the node; when two ranks restore at once, the second can re-download over files the
    first is reading (CI saw a truncated ``config.json`` from an S3 checkpoint). A private copy
    costs one download per rank and cannot race. Local checkpoints are read in place.
    """
    if isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        yield checkpoint.path
        return
    with tempfile.TemporaryDirectory(prefix="sgrec-ckpt-") as tmp:
        local = os.path.join(tmp, "checkpoint")
        checkpoint.to_directory(local)
        yield local


def inject_test_failure() -> None:
    """Test-only (SFT, A2PO, align): die like a lost worker, once the previous checkpoint is
    registered."""
    ray.train.get_all_reported_checkpoints(timeout_s=60)
    print("[train] test fault injection: worker exits now", flush=True)
    os._exit(1)
