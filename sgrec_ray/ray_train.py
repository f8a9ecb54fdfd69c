"""Ray Train plumbing shared by every trainer here (SFT, A2PO, SASRec, ranker, align, Stage B).

One place for the things each of them needs and that are easy to get subtly wrong: one way into a
worker (a loop takes one typed argument, not a dict of string keys), a ``TorchTrainer`` built from
the fields every trainer section of the config has, the driver's run (storage, ``--force``, the
banner, a finished run that must have produced a checkpoint), and reading a checkpoint on a worker
without racing the other ranks.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import pyarrow.fs as pafs
import ray.train
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, Result, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from sgrec_ray import storage
from sgrec_ray.errors import CheckpointError

RAY_TRAIN_DIR = "ray_train"  # a stage's Ray Train runs: <stage_uri>/ray_train/<run name>
LOOP_ARGS = "args"  # the one key of the dict Ray Train hands a worker (see make_trainer)

A = TypeVar("A")


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
    loop: Callable[[A], None],
    args: A,
    workers: Workers,
    *,
    name: str,
    storage_path: str,
    datasets: dict[str, Any] | None = None,
    num_to_keep: int | None = None,
    keep_best: str | None = None,
) -> TorchTrainer:
    """A ``TorchTrainer`` whose run lives at ``storage_path/name`` (so a rerun with that name resumes).

    ``loop`` takes one typed argument, ``args`` (a dataclass holding the trainer's config
    section(s) and what the driver derived from them), so a worker reads ``args.sft.lr`` where a
    type checker sees it. Ray Train wants a function of one dict; :func:`_call_loop` is that
    function, and the only place that dict is read.
    ``workers`` is the trainer's config section; ``use_gpu`` is read when the section has it.
    ``keep_best``: a reported metric (higher is better) that decides which ``num_to_keep``
    checkpoints survive; Ray always keeps the latest one too, which is what a resume reads.
    """
    return TorchTrainer(
        functools.partial(_call_loop, loop),
        train_loop_config={LOOP_ARGS: args},
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


def _call_loop(loop: Callable[[A], None], config: dict[str, Any]) -> None:
    """On a worker: unpack :func:`make_trainer`'s one typed argument and run the loop with it."""
    loop(config[LOOP_ARGS])


def fit(trainer: TorchTrainer, what: str) -> Result:
    """``trainer.fit()``, failing loudly when the run ended without a checkpoint to export."""
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{what}: training finished without a checkpoint ({result.error})")
    return result


def ray_train_path(stage_uri: str) -> str:
    """Where a stage keeps its Ray Train runs (``<stage_uri>/ray_train``)."""
    return storage.join(stage_uri, RAY_TRAIN_DIR)


def run_trainer(
    loop: Callable[[A], None],
    args: A,
    workers: Workers,
    *,
    storage_path: str,
    run_name: str,
    fresh: bool,
    what: str,
    banner: str | None = None,
    datasets: dict[str, Any] | None = None,
    num_to_keep: int | None = None,
    keep_best: str | None = None,
) -> Result:
    """The driver's side of every trainer here: one Ray Train run, from a clean slate or resumed.

    ``fresh`` (``--force``) deletes the earlier checkpoints of ``storage_path/run_name`` first;
    otherwise a run of that name resumes from its latest one. ``banner`` (the stage's one-line
    summary of what it is about to train) is printed just before Ray starts the workers. Returns
    the finished run, which has a checkpoint (:func:`fit`); ``what`` names it in that error.
    The other arguments are :func:`make_trainer`'s.
    """
    if fresh:
        storage.delete_dir(storage.join(storage_path, run_name))
    if banner is not None:
        print(banner, flush=True)
    trainer = make_trainer(
        loop,
        args,
        workers,
        name=run_name,
        storage_path=storage_path,
        datasets=datasets,
        num_to_keep=num_to_keep,
        keep_best=keep_best,
    )
    return fit(trainer, what)


def failure_point(env_var: str) -> int | None:
    """Test-only fault injection: the epoch or step named by ``env_var`` in the driver's
    environment (the loop's ``args`` carries it to the workers), None when unset or empty."""
    value = os.environ.get(env_var)
    return int(value) if value else None


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
