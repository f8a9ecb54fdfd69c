"""Artifacts by URI: local paths, ``file://``, ``s3://``, ``gs://`` and every fsspec protocol
(``abfs://``, ``az://``, ``http(s)://``, ``memory://``, ...) through one pyarrow filesystem layer.

Every stage reads and writes through these helpers, so a run that works on a laptop works unchanged
against object storage on a cluster. ``s3://`` and ``gs://`` use pyarrow's own filesystems (the
ones Ray Train's storage uses; pyarrow honours ``AWS_ENDPOINT_URL`` for S3-compatible stores);
any other scheme goes through fsspec, wrapped as a pyarrow filesystem, so the helpers below need
no second code path. Azure needs ``adlfs`` installed (fsspec names the package when it is missing);
``http(s)://`` is read-only.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sgrec_ray.errors import StorageError, StorageUnavailable


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def normalize(uri: str) -> str:
    """Local paths become absolute (Ray workers may run in another working directory)."""
    if uri.startswith("file://"):
        return os.path.abspath(uri[len("file://") :])
    if "://" in uri:
        return uri.rstrip("/")
    return os.path.abspath(os.path.expanduser(uri))


def join(base: str, *parts: str) -> str:
    base = normalize(base)
    if is_remote(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


# Schemes served by pyarrow's built-in filesystems; every other scheme goes through fsspec.
PYARROW_SCHEMES = ("s3", "gs", "gcs")


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for ``uri`` and the path within it; StorageError for a bad URI."""
    uri = normalize(uri)
    if not is_remote(uri):
        return pafs.LocalFileSystem(), uri
    scheme = uri.split("://", 1)[0].lower()
    if scheme in PYARROW_SCHEMES:
        try:
            return pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise StorageError(f"{uri}: not a usable {scheme}:// URI ({err})") from err
    return _fsspec(uri, scheme)


def _fsspec(uri: str, scheme: str) -> tuple[pafs.FileSystem, str]:
    import fsspec

    try:
        fs = fsspec.filesystem(scheme)
    except ImportError as err:  # a known protocol whose package is not installed
        raise StorageError(f"{uri}: {scheme}:// needs an extra package: {err}") from err
    except ValueError as err:  # fsspec: "Protocol not known"
        raise StorageError(
            f"{uri}: unknown storage scheme {scheme!r}; use a local path, file://, s3://, gs://, "
            "abfs://, http(s):// or another fsspec protocol"
        ) from err
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), fs._strip_protocol(uri)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as err:
        if not is_remote(normalize(uri)):
            raise
        raise _unavailable(uri, err, "reach") from err


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)


def delete_dir(uri: str) -> None:
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def listdir(uri: str) -> list[str]:
    """Base names directly under ``uri`` (empty if it does not exist)."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(info.base_name for info in infos)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def _unavailable(uri: str, err: OSError, action: str = "write") -> StorageUnavailable:
    return StorageUnavailable(
        f"cannot {action} {uri}: {err}. The stage did not finish and its previous output (if any) "
        "is untouched; check the store (endpoint, credentials, network) and rerun"
    )


def write_bytes(uri: str, data: bytes) -> None:
    try:
        _write_bytes(uri, data)
    except StorageUnavailable:
        raise
    except OSError as err:
        if not is_remote(normalize(uri)):
            raise  # a local disk error (full, permissions) is its own clear message
        raise _unavailable(uri, err) from err


def _write_bytes(uri: str, data: bytes) -> None:
    fs, path = filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    # Write to a sibling then move, so a reader never sees half a file (local); S3 puts are atomic.
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{os.getpid()}"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
    else:
        with fs.open_output_stream(path) as f:
            f.write(data)


def append_text(uri: str, text: str) -> None:
    """Append ``text`` to the file at ``uri`` (created if missing).

    Local files get a real append (one write call, so whole lines land together). Object stores
    have no append: there the object is read and written back whole.
    """
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "a") as f:
            f.write(text)
        return
    old = read_text(uri) if exists(uri) else ""
    write_text(uri, old + text)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode()


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode())


def read_json(uri: str) -> Any:
    return json.loads(read_text(uri))


def write_json(uri: str, obj: Any) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_table(uri: str, columns: list[str] | None = None) -> pa.Table:
    if _is_http(uri):
        # Plain web servers need not support range requests, which seeking in Parquet needs.
        return pq.read_table(pa.BufferReader(read_bytes(uri)), columns=columns)
    fs, path = filesystem(uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


def write_table(uri: str, table: pa.Table) -> None:
    fs, path = filesystem(uri)
    try:
        parent = path.rsplit("/", 1)[0]
        if parent:
            fs.create_dir(parent, recursive=True)
        pq.write_table(table, path, filesystem=fs)
    except OSError as err:
        if not is_remote(normalize(uri)):
            raise
        raise _unavailable(uri, err) from err


def download_dir(uri: str, local_dir: str) -> str:
    """Copy a directory (e.g. a model checkpoint) to local disk, for libraries that need a path."""
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    pafs.copy_files(
        path, local_dir, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem()
    )
    return local_dir


def upload_dir(local_dir: str, uri: str) -> None:
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem) and os.path.abspath(local_dir) == path:
        return
    fs.create_dir(path, recursive=True)
    pafs.copy_files(
        local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs
    )


def _is_http(uri: str) -> bool:
    return normalize(uri).startswith(("http://", "https://"))


def iter_batches(
    uri: str, columns: list[str] | None = None, batch_size: int = 1 << 16
) -> Iterator[pa.RecordBatch]:
    """Record batches of a Parquet file or folder of shards, in file order, one batch in memory.

    For stages whose input grows with the log: they stream through it instead of reading it whole.
    """
    if _is_http(uri):  # no range reads: the whole file, then its batches
        yield from read_table(uri, columns=columns).to_batches(max_chunksize=batch_size)
        return
    fs, path = filesystem(uri)
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    # use_threads=False keeps file order (stages rely on it: per-user time order, sample order).
    yield from dataset.scanner(
        columns=columns, batch_size=batch_size, use_threads=False
    ).to_batches()


def count_rows(uri: str) -> int:
    """Rows of a Parquet file or folder of shards, from the footers (no data read)."""
    if _is_http(uri):
        return read_table(uri, columns=[]).num_rows
    fs, path = filesystem(uri)
    return pads.dataset(path, filesystem=fs, format="parquet").count_rows()


@contextlib.contextmanager
def parquet_writer(uri: str, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A Parquet file written batch by batch, for outputs that grow with the log (one batch in
    memory instead of the whole table). An empty writer still leaves a valid, empty file."""
    fs, path = filesystem(uri)
    try:
        parent = path.rsplit("/", 1)[0]
        if parent:
            fs.create_dir(parent, recursive=True)
        with pq.ParquetWriter(path, schema, filesystem=fs) as writer:
            yield writer
    except OSError as err:
        if not is_remote(normalize(uri)):
            raise
        raise _unavailable(uri, err) from err
