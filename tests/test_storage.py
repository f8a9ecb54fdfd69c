"""Storage helpers on local paths (the S3 path is covered in test_s3.py against a real S3 server)."""

from __future__ import annotations

import pyarrow as pa

from sgrec_ray import storage


def test_roundtrips_and_listing(tmp_path):
    base = f"file://{tmp_path}/a"
    storage.write_json(storage.join(base, "x", "m.json"), {"k": 1})
    assert storage.read_json(storage.join(base, "x", "m.json")) == {"k": 1}
    table = pa.table({"a": [1, 2]})
    storage.write_table(storage.join(base, "t.parquet"), table)
    assert storage.read_table(storage.join(base, "t.parquet")).equals(table)
    assert storage.listdir(base) == ["t.parquet", "x"]
    assert storage.exists(storage.join(base, "x")) and not storage.exists(storage.join(base, "y"))
    assert storage.listdir(storage.join(base, "missing")) == []


def test_local_uris_are_normalised(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.normalize("runs") == str(tmp_path / "runs")
    assert storage.normalize(f"file://{tmp_path}/r") == str(tmp_path / "r")
    assert storage.normalize("s3://bucket/p/") == "s3://bucket/p"
    assert storage.join("s3://bucket/p", "run", "stage") == "s3://bucket/p/run/stage"


def test_write_is_atomic_on_local_disk(tmp_path):
    target = tmp_path / "f.txt"
    storage.write_text(str(target), "one")
    storage.write_text(str(target), "two")
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temp files left behind
