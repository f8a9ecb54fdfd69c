"""The mapped history store: the same histories as grouping the log in memory, built once per node."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sgrec_ray.eval.popularity import item_counts, item_counts_streamed
from sgrec_ray.serving import histories
from sgrec_ray.serving.histories import HistoryOrderError, HistoryStore, local_store


def _grouped(table: pa.Table) -> dict[str, list[int]]:
    """The old replica's dict: group_by in file order (what the store replaces)."""
    g = table.group_by("user_id", use_threads=False).aggregate([("item_idx", "list")])
    return dict(zip(g.column(0).to_pylist(), g.column(1).to_pylist(), strict=True))


def _log(users: list[str], seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows_u: list[str] = []
    rows_i: list[int] = []
    for u in users:
        n = int(rng.integers(1, 7))
        rows_u += [u] * n
        rows_i += rng.integers(0, 50, n).tolist()
    return pa.table({"user_id": rows_u, "item_idx": pa.array(rows_i, pa.int32())})


USERS = ["10", "2", "1", "é-user", "b", "a", "user 7", "Ω"]  # not byte order, non-ASCII too


@pytest.mark.parametrize("batch_rows", [1, 3, 1 << 20])
def test_store_equals_in_memory_grouping(tmp_path, monkeypatch, batch_rows):
    """Users whose runs cross batch boundaries, file-order histories, non-ASCII keys."""
    log = _log(USERS)
    pq.write_table(log, tmp_path / "interactions.parquet", row_group_size=4)
    monkeypatch.setattr(histories, "BATCH_ROWS", batch_rows)
    store = HistoryStore(local_store(str(tmp_path / "interactions.parquet"), str(tmp_path / "c")))
    expected = _grouped(log)
    assert len(store) == len(expected)
    assert sorted(store) == sorted(expected)
    for user, items in expected.items():
        assert user in store
        got = store[user]
        assert got.dtype == np.int32 and got.tolist() == items
    for missing in ("", "zz", "1 ", "0"):
        assert missing not in store
        with pytest.raises(KeyError):
            store[missing]
    assert 1 not in store  # a non-string key is just unknown


def test_sharded_folder_and_empty_log(tmp_path):
    log = _log(USERS, seed=1)
    shards = tmp_path / "interactions"
    shards.mkdir()
    pq.write_table(log.slice(0, 10), shards / "part-0.parquet")
    pq.write_table(log.slice(10), shards / "part-1.parquet")
    store = HistoryStore(local_store(str(shards), str(tmp_path / "c")))
    assert {u: store[u].tolist() for u in store} == _grouped(log)

    pq.write_table(log.slice(0, 0), tmp_path / "empty.parquet")
    empty = HistoryStore(local_store(str(tmp_path / "empty.parquet"), str(tmp_path / "c")))
    assert len(empty) == 0 and "1" not in empty and list(empty) == []


def test_built_once_and_rebuilt_when_the_log_changes(tmp_path):
    path = tmp_path / "interactions.parquet"
    pq.write_table(_log(USERS), path)
    cache = str(tmp_path / "c")
    first = local_store(str(path), cache)
    stamp = os.stat(os.path.join(first, histories.USERS_FILE)).st_mtime_ns
    assert local_store(str(path), cache) == first  # reused, not rebuilt
    assert os.stat(os.path.join(first, histories.USERS_FILE)).st_mtime_ns == stamp
    changed = _log(["new-user"], seed=3)
    pq.write_table(changed, path)
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    second = local_store(str(path), cache)
    assert second != first
    assert list(HistoryStore(second)) == ["new-user"]


def test_a_user_split_over_two_runs_is_a_clear_error(tmp_path):
    log = pa.table({"user_id": ["a", "b", "a"], "item_idx": pa.array([1, 2, 3], pa.int32())})
    pq.write_table(log, tmp_path / "interactions.parquet")
    with pytest.raises(HistoryOrderError, match="'a' appears in more than one run"):
        local_store(str(tmp_path / "interactions.parquet"), str(tmp_path / "c"))
    assert not [p for p in os.listdir(tmp_path / "c") if ".tmp-" in p]  # no half-built store left


def test_streamed_popularity_counts_equal_the_in_memory_ones(tmp_path):
    rng = np.random.default_rng(0)
    windows = [rng.integers(0, 30, int(rng.integers(0, 9))).tolist() for _ in range(300)]
    loss_from = rng.integers(0, 4, 300).tolist()
    train = pa.table(
        {"items": pa.array(windows, pa.list_(pa.int32())), "loss_from": pa.array(loss_from)}
    )
    pq.write_table(train, tmp_path / "train.parquet", row_group_size=37)
    expected = np.zeros(30, dtype=np.int64)
    for items, start in zip(windows, loss_from, strict=True):
        np.add.at(expected, np.asarray(items[start:], dtype=np.int64), 1)
    assert item_counts(train, 30).tolist() == expected.tolist()
    streamed = item_counts_streamed(str(tmp_path / "train.parquet"), 30, batch_rows=11)
    assert streamed.tolist() == expected.tolist()
    with pytest.raises(IndexError, match="n_items 20"):
        item_counts(train, 20)
