"""Storage URIs beyond local and s3://: fsspec protocols through the same helpers (a real HTTP
server on loopback, fsspec's in-memory filesystem), and bad URIs as one clear error."""

from __future__ import annotations

import functools
import http.server
import threading
import uuid

import pyarrow as pa
import pytest

from sgrec_ray import storage
from sgrec_ray.errors import StorageError, is_user_error


@pytest.fixture
def http_root(tmp_path):
    """A plain HTTP file server (stdlib) over ``tmp_path``: what https:// data hosting looks like."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_uris_are_readable(http_root):
    folder, url = http_root
    table = pa.table({"user_id": ["1", "2"], "item_id": ["a", "b"]})
    storage.write_table(str(folder / "log.parquet"), table)
    storage.write_json(str(folder / "m.json"), {"k": 1})
    assert storage.exists(f"{url}/log.parquet") and not storage.exists(f"{url}/nope.parquet")
    assert storage.read_table(f"{url}/log.parquet").equals(table)
    assert storage.read_json(f"{url}/m.json") == {"k": 1}


def test_fsspec_protocols_read_and_write_like_s3():
    base = f"memory://sgrec-{uuid.uuid4().hex}/run"
    table = pa.table({"a": [1, 2, 3]})
    storage.write_table(storage.join(base, "stage", "t.parquet"), table)
    storage.write_json(storage.join(base, "stage", "manifest.json"), {"ok": True})
    assert storage.read_table(storage.join(base, "stage", "t.parquet")).equals(table)
    assert storage.listdir(storage.join(base, "stage")) == ["manifest.json", "t.parquet"]
    storage.delete_dir(storage.join(base, "stage"))
    assert not storage.exists(storage.join(base, "stage", "manifest.json"))


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("nosuchscheme://bucket/x", "unknown storage scheme 'nosuchscheme'"),
        ("abfs://container/x", "abfs:// needs an extra package"),  # adlfs is not a dependency
    ],
)
def test_bad_uris_are_one_clear_user_error(uri, message):
    with pytest.raises(StorageError, match=message) as err:
        storage.exists(uri)
    assert is_user_error(err.value)
