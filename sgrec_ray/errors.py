"""Errors a user can fix themselves, and how the CLI shows them.

Why a marker class: the CLI prints these as one ``error:`` line (the message names the file, row
or key and the fix) and keeps tracebacks for ``--debug``; anything else is a bug and keeps its
traceback. Module-specific errors (``ConfigError``, ``DataError``, ...) subclass both this and
the builtin they always were, so existing ``except ValueError`` code is unchanged.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input, a missing stage, model or file, a bad URI, an unreachable cluster."""


class StageNotFinished(UserError, RuntimeError):
    """An upstream stage has no finished output; the message names the command that makes it."""


class ClusterUnreachable(UserError, ConnectionError):
    """``ray.address`` (or RAY_ADDRESS) names a cluster that does not answer."""


class StorageError(UserError, ValueError):
    """A storage URI whose scheme is unknown, or whose filesystem package is not installed."""


class StorageUnavailable(UserError, OSError):
    """The store did not take a write (server down, network gone); a rerun redoes the stage."""


class CheckpointError(UserError, ValueError):
    """A checkpoint or training state that cannot be loaded (corrupted, truncated, or holding
    objects other than tensors and plain values); never loaded silently or by running code."""


# FileNotFoundError: a path the user gave (a model, a checkpoint, a labels file) does not exist.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)


def root_cause(err: BaseException) -> BaseException:
    """The exception a Ray task raised, for errors that crossed a ``ray.get`` (RayTaskError)."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err


def is_user_error(err: BaseException) -> bool:
    return isinstance(err, USER_ERRORS) or isinstance(root_cause(err), USER_ERRORS)


def one_line(err: BaseException) -> str:
    """``error: <message>`` for the terminal: the message of the root cause, first line first."""
    text = str(root_cause(err)).strip() or type(err).__name__
    return f"error: {text}"
