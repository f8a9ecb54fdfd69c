"""Per-user histories in a memory-mapped store that every replica on a node shares, never copies.

A replica used to hold every user's history as a Python dict of numpy arrays: hundreds of bytes per
user in every replica, and a load that reads the whole interaction log. Here the histories live in
two files on the node's local disk, built once per node from the data stage's
``interactions.parquet`` (streamed in batches, so the build holds one batch plus the user keys):

* ``users.arrow``: an Arrow IPC file, one record batch, sorted by ``user_id`` (UTF-8 byte order),
  with ``start``/``stop`` offsets into the item array;
* ``items.npy``: one flat int32 array of ``item_idx``, each user's events contiguous, oldest first
  (the data stage's order: sorted by user, then time, ties in file order).

Both are memory-mapped: a lookup is a binary search over the mapped keys plus one slice, so a
replica's resident memory is the pages it touched, and replicas on one node share the page cache.
The store of a data folder is keyed by a fingerprint of ``interactions.parquet`` (URI, sizes, mtimes),
so a rewritten data folder gets a new store and a finished one is reused.
"""

from __future__ import annotations

import bisect
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from sgrec_ray import storage
from sgrec_ray.data import schema
from sgrec_ray.errors import UserError

USERS_FILE = "users.arrow"
ITEMS_FILE = "items.npy"
USERS_SCHEMA = pa.schema(
    [("user_id", pa.large_string()), ("start", pa.int64()), ("stop", pa.int64())]
)
BATCH_ROWS = 1 << 20  # interaction rows read per batch while building
STORE_FORMAT = "v1"  # part of the fingerprint: a layout change builds a fresh store


class HistoryOrderError(UserError, ValueError):
    """The interactions are not grouped by user, so a user's events are not one contiguous run."""


class _UsersAndItems:
    """Accumulates one run per user while the items stream to ``items.npy``."""

    def __init__(self, f: BinaryIO, n_rows: int) -> None:
        self.f = f  # plain writes, not a map: the builder's RSS stays small
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.int32)), "fortran_order": False}
        np.lib.format.write_array_header_1_0(self.f, {**header, "shape": (n_rows,)})
        self.n_rows = n_rows
        self.written = 0
        self.users: list[pa.Array] = []
        self.lengths: list[np.ndarray] = []
        self.last: str | None = None  # the user of the last run so far (it may continue)

    def add(self, batch: pa.RecordBatch) -> None:
        users = batch.column("user_id").cast(pa.large_string())
        items = batch.column("item_idx")
        if users.null_count or items.null_count:
            raise HistoryOrderError("interactions carry null user_id or item_idx values")
        n = len(users)
        if n == 0:
            return
        self.f.write(items.to_numpy(zero_copy_only=False).astype(np.int32, copy=False).tobytes())
        self.written += n
        # Run starts: row 0 and every row whose user differs from the row before.
        changed = pc.not_equal(users[1:], users[:-1]).to_numpy(zero_copy_only=False)
        starts = np.concatenate([[0], np.flatnonzero(changed) + 1])
        lengths = np.diff(np.append(starts, n)).astype(np.int64)
        run_users = users.take(pa.array(starts))
        if self.last is not None and run_users[0].as_py() == self.last:
            self.lengths[-1][-1] += lengths[0]  # the previous batch's last user continues
            run_users, lengths = run_users[1:], lengths[1:]
        if len(run_users):
            self.users.append(run_users)
            self.lengths.append(lengths)
            self.last = run_users[-1].as_py()

    def finish(self) -> pa.Table:
        """The users table (sorted by key) once every batch is in; raises if a user repeats."""
        if self.written != self.n_rows:
            raise RuntimeError(f"read {self.written} interaction rows, expected {self.n_rows}")
        users = pa.concat_arrays(self.users) if self.users else pa.array([], pa.large_string())
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        stops = np.cumsum(lengths)
        order = pc.sort_indices(users)
        users = users.take(order)
        if len(users) > 1:
            repeat = pc.equal(users[1:], users[:-1]).to_numpy(zero_copy_only=False)
            if repeat.any():
                first = users[int(np.flatnonzero(repeat)[0])].as_py()
                raise HistoryOrderError(
                    f"user {first!r} appears in more than one run of interactions: the data "
                    "stage writes them sorted by user then time; rerun the data stage"
                )
        idx = order.to_numpy()
        return pa.table(
            {"user_id": users, "start": (stops - lengths)[idx], "stop": stops[idx]},
            schema=USERS_SCHEMA,
        )


def build_store(interactions_uri: str, out_dir: str) -> int:
    """Write ``users.arrow`` and ``items.npy`` for ``interactions_uri`` into ``out_dir``.

    Memory: one batch of rows plus one key and offset per user. Returns the number of users.
    """
    os.makedirs(out_dir, exist_ok=True)
    n_rows = storage.count_rows(interactions_uri)
    with open(os.path.join(out_dir, ITEMS_FILE), "wb") as f:
        acc = _UsersAndItems(f, n_rows)
        for batch in storage.iter_batches(interactions_uri, ["user_id", "item_idx"], BATCH_ROWS):
            acc.add(batch)
    users = acc.finish()
    sink = pa.OSFile(os.path.join(out_dir, USERS_FILE), "wb")
    with sink, pa.ipc.new_file(sink, USERS_SCHEMA) as writer:
        writer.write_table(users, max_chunksize=max(1, users.num_rows))  # one batch: one map
    return users.num_rows


def fingerprint(interactions_uri: str) -> str:
    """A short id of the interactions file(s): URI, and each file's size and modification time."""
    fs, path = storage.filesystem(interactions_uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{interactions_uri}: no interactions; run the data stage first")
    infos = [info]
    if info.type == pafs.FileType.Directory:
        infos = sorted(
            fs.get_file_info(pafs.FileSelector(path, recursive=True)), key=lambda i: i.path
        )
    parts = [STORE_FORMAT, storage.normalize(interactions_uri)]
    parts += [f"{i.path}:{i.size}:{i.mtime_ns}" for i in infos]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def default_cache_dir() -> str:
    return os.path.join(tempfile.gettempdir(), "sgrec-histories")


def local_store(interactions_uri: str, cache_dir: str | None = None) -> str:
    """The node-local store directory for ``interactions_uri``, built once if missing.

    Replicas starting together on one node take a file lock: the first builds into a temporary
    folder and renames it into place (atomic), the others wait and then map the same files.
    """
    root = cache_dir or default_cache_dir()
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, fingerprint(interactions_uri))
    if os.path.exists(os.path.join(final, USERS_FILE)):
        return final
    with open(final + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(final, USERS_FILE)):
            tmp = tempfile.mkdtemp(prefix=os.path.basename(final) + ".tmp-", dir=root)
            try:
                build_store(interactions_uri, tmp)
                os.replace(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return final


class HistoryStore(Mapping[str, np.ndarray]):
    """``user_id -> int32 item_idx`` (oldest first) over the mapped files of one store directory.

    A read-only Mapping, so callers use it like the dict it replaces (``in``, ``[]``, iteration in
    key order). Nothing is copied at open time; each lookup reads O(log n_users) key pages.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._map = pa.memory_map(os.path.join(directory, USERS_FILE))
        table = pa.ipc.open_file(self._map).read_all()  # zero-copy: buffers point into the map
        if table.schema != USERS_SCHEMA or table.column("user_id").num_chunks > 1:
            raise UserError(f"{directory}: not a history store (schema {table.schema})")
        keys = table.column("user_id").chunk(0) if table.num_rows else None
        self._n = table.num_rows
        if keys is not None:
            _, offsets, data = keys.buffers()
            self._key_offsets = np.frombuffer(offsets, dtype=np.int64)[
                keys.offset : keys.offset + self._n + 1
            ]
            self._key_data = memoryview(data) if data is not None else memoryview(b"")
            self._start = table.column("start").chunk(0).to_numpy()
            self._stop = table.column("stop").chunk(0).to_numpy()
        self._items = np.load(os.path.join(directory, ITEMS_FILE), mmap_mode="r")

    def _key(self, i: int) -> bytes:
        return bytes(self._key_data[self._key_offsets[i] : self._key_offsets[i + 1]])

    def _find(self, user: Any) -> int | None:
        if not isinstance(user, str) or self._n == 0:
            return None
        key = user.encode()
        i = bisect.bisect_left(_Keys(self), key)
        return i if i < self._n and self._key(i) == key else None

    def __getitem__(self, user: str) -> np.ndarray:
        i = self._find(user)
        if i is None:
            raise KeyError(user)
        return np.array(self._items[self._start[i] : self._stop[i]], dtype=np.int32)

    def __contains__(self, user: object) -> bool:
        return self._find(user) is not None

    def __iter__(self) -> Iterator[str]:
        return (self._key(i).decode() for i in range(self._n))

    def __len__(self) -> int:
        return self._n


class _Keys:
    """The store's sorted keys as a sequence of bytes, for :func:`bisect.bisect_left`."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return self.store._n

    def __getitem__(self, i: int) -> bytes:
        return self.store._key(i)


def open_histories(data_uri: str, cache_dir: str | None = None) -> HistoryStore:
    """The mapped histories of a data stage folder (local or remote), built on this node if new."""
    return HistoryStore(local_store(storage.join(data_uri, schema.INTERACTIONS_FILE), cache_dir))
