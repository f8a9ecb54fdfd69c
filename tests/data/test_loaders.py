"""Each loader on small hand-written files, plus real ML-100k (RecBole wheel) and Office data."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from sgrec_ray.config import ColumnMap
from sgrec_ray.data import loaders
from sgrec_ray.data.stage import build
from sgrec_ray.data.validate import DataError

from .conftest import FIXTURES, OFFICE


def _build(data_cfg, **fields):
    return build(data_cfg(max_users=None, **fields).data)


def test_natural_key_orders_numbers_as_numbers():
    ids = ["10", "2", "A10", "A9", "1", "b", "007"]
    assert sorted(ids, key=loaders.natural_key) == ["1", "2", "007", "10", "A9", "A10", "b"]


def test_compose_text():
    row = {"title": "Toy Story (1995)", "genres": "Animation, Comedy", "year": None}
    assert loaders.compose_text(row, ["title", "genres", "year"]) == (
        "Toy Story (1995). Genres: Animation, Comedy"
    )
    assert loaders.compose_text({"title": None, "genres": "Drama"}, ["title", "genres"]) == (
        "Genres: Drama"
    )
    assert loaders.compose_text({"title": " "}, ["title"]) == ""


def test_movielens_atomic_fixture(data_cfg):
    t = _build(data_cfg, path=str(FIXTURES / "ml_atomic"), max_history=3)
    items = t.items.to_pylist()
    assert [i["item_id"] for i in items] == ["10", "20", "30", "40", "50", "60"]
    assert [i["item_idx"] for i in items] == list(range(6))
    assert items[0]["title"] == "Toy Story (1995)"
    assert items[0]["text"] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    assert items[0]["genres"] == "Animation, Children's, Comedy"
    assert items[5]["title"] == "Café au lait (1994)"
    # the placeholder title "unkonwn" with genre "unknown": no text, falls back to the id, counted
    assert items[3]["text"] == "40" and items[3]["genres"] is None
    assert t.stats["items_missing_text"] == 1
    assert t.stats["interactions"] == 14 and t.stats["users"] == 4
    assert t.users.column_names == ["user_id", "age", "gender", "occupation", "zip_code"]
    assert t.users.column("user_id").to_pylist() == ["1", "2", "3", "10"]
    assert t.users.schema.field("age").type == pa.int32()
    assert t.interactions.column("rating").to_pylist()[:2] == [5.0, 4.0]


def test_movielens_grouplens_matches_atomic(data_cfg):
    atomic = _build(data_cfg, path=str(FIXTURES / "ml_atomic"))
    grouplens = _build(data_cfg, path=str(FIXTURES / "ml_grouplens"))
    assert grouplens.interactions.equals(atomic.interactions)
    for col in ("item_idx", "item_id", "title", "text", "genres", "year"):
        assert grouplens.items.column(col).equals(atomic.items.column(col)), col
    assert grouplens.users.equals(atomic.users)
    assert grouplens.test.equals(atomic.test) and grouplens.train.equals(atomic.train)


def test_movielens_missing_folder_files(data_cfg, tmp_path):
    with pytest.raises(DataError, match="no MovieLens files"):
        _build(data_cfg, path=str(tmp_path))


def test_movielens_without_recbole_says_how_to_install(monkeypatch):
    monkeypatch.setattr(loaders.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps recbole==1\.2\.1"):
        loaders.recbole_ml100k_dir()


GENERIC_COLUMNS = ColumnMap(
    user_id="uid", item_id="iid", timestamp="when", rating="stars", value="revenue"
)


def _generic(data_cfg, log_path, items_path=None, **fields):
    return _build(
        data_cfg,
        source="generic",
        path=str(log_path),
        items_path=str(items_path or FIXTURES / "generic" / "items.csv"),
        users_path=str(FIXTURES / "generic" / "users.csv"),
        columns=GENERIC_COLUMNS,
        item_text_fields=["title", "description"],
        **fields,
    )


def test_generic_csv_with_column_mapping(data_cfg):
    t = _generic(data_cfg, FIXTURES / "generic" / "events.csv")
    assert t.stats["rejects_total"] == 0
    inter = t.interactions.to_pylist()
    assert [r["user_id"] for r in inter][:4] == ["u1"] * 4  # natural order: u1 < u2 < u10
    assert [r["user_id"] for r in inter][-3:] == ["u10"] * 3
    # ISO with Z, int, float string and ISO with offset all become epoch seconds
    assert [r["timestamp"] for r in inter[:4]] == [1609459200, 1609459300, 1609459400, 1609459500]
    assert inter[0]["value"] == 1.5 and inter[1]["value"] is None
    items = {r["item_id"]: r for r in t.items.to_pylist()}
    assert items["A"]["text"] == "Blue pen. Description: A smooth blue ballpoint pen."
    assert items["D"]["text"] == "Marker"
    assert items["E"]["text"] == "E" and t.stats["items_missing_text"] == 1
    assert "price" in t.items.column_names  # extra catalogue columns are kept (as strings)
    assert t.users.column("user_id").to_pylist() == ["u1", "u2", "u10"]
    assert t.stats["users_file_rows_without_events"] == 1  # u99


def test_generic_parquet_typed_columns(data_cfg, tmp_path):
    csv_table = pacsv.read_csv(FIXTURES / "generic" / "events.csv")
    # a typed Parquet log: integer-like ids, a real timestamp column
    stamps = [
        1609459200, 1609459300, 1609459400, 1609459500, 1609459200, 1609459300, 1609459400,
        1609459200, 1609459201, 1609459202,
    ]  # fmt: skip
    table = csv_table.set_column(
        2, "when", pa.array(stamps, pa.int64()).cast(pa.timestamp("s", tz="UTC"))
    )
    pq.write_table(table, tmp_path / "events.parquet")
    items = pacsv.read_csv(FIXTURES / "generic" / "items.csv")
    pq.write_table(items, tmp_path / "items.parquet")
    from_parquet = _generic(data_cfg, tmp_path / "events.parquet", tmp_path / "items.parquet")
    from_csv = _generic(data_cfg, FIXTURES / "generic" / "events.csv")
    assert from_parquet.interactions.equals(from_csv.interactions)
    assert from_parquet.items.column("text").equals(from_csv.items.column("text"))


def test_generic_needs_items_path(data_cfg):
    with pytest.raises(DataError, match="items_path"):
        _build(data_cfg, source="generic", path=str(FIXTURES / "generic" / "events.csv"))


def test_minionerec_fixture(data_cfg, tmp_path):
    t = _build(
        data_cfg, source="minionerec", path=str(FIXTURES / "minionerec"),
        item_text_fields=["title", "description"], max_history=3,
    )  # fmt: skip
    # train rows: items = history + [target], one target each
    train = t.train.to_pylist()
    assert [(r["user_id"], r["items"], r["loss_from"]) for r in train] == [
        ("U1", [0, 1], 1), ("U1", [0, 1, 2], 2), ("U2", [2, 3], 1), ("U1", [0, 1, 2, 3], 3),
        ("U10", [5, 4], 1),
    ]  # fmt: skip
    test = t.test.to_pylist()
    assert test[0] == {
        "user_id": "U1", "history": [2, 3, 4], "target": 5, "timestamp": 7,
        "seen": [0, 1, 2, 3, 4],
    }  # fmt: skip
    assert [r["timestamp"] for r in t.valid.to_pylist()] == [5, 6]
    items = t.items.to_pylist()
    assert items[2]["title"] == "A4 paper & more"  # HTML entities decoded
    assert items[0]["text"] == "Blue pen. Description: Blue pen for the office."
    assert items[5]["text"] == "Ruler"
    codes = t.sid_codes.to_pylist()
    assert codes[0] == {"item_idx": 0, "codes": [1, 2, 3]} and len(codes) == 6
    # interactions reconstructed per user from the rows, in row order
    by_user = {}
    for r in t.interactions.to_pylist():
        by_user.setdefault(r["user_id"], []).append(r["item_idx"])
    assert by_user == {"U1": [0, 1, 2, 3, 4, 5], "U2": [2, 3, 1, 0], "U10": [5, 4, 3]}
    assert t.stats["train_from"] == "train"


def test_minionerec_without_train(data_cfg, tmp_path, caplog):
    folder = tmp_path / "mor"
    shutil.copytree(FIXTURES / "minionerec", folder)
    shutil.rmtree(folder / "train")
    with pytest.raises(DataError, match="minionerec_train_from=valid"):
        _build(data_cfg, source="minionerec", path=str(folder), item_text_fields=["title"])
    t = _build(
        data_cfg, source="minionerec", path=str(folder), item_text_fields=["title"],
        minionerec_train_from="valid",
    )  # fmt: skip
    assert t.stats["train_from"] == "valid" and "NOT MiniOneRec's protocol" in t.stats["notes"][0]
    assert "NOT MiniOneRec's protocol" in caplog.text
    assert t.train.num_rows == t.valid.num_rows == 2
    assert t.test.column("timestamp").to_pylist() == [2, 3, 4]


def test_minionerec_parse_sid_tokens():
    from sgrec_ray.data.minionerec import parse_sid_tokens

    assert parse_sid_tokens(["<a_60>", "<b_159>", "<c_203>"]) == [60, 159, 203]
    assert parse_sid_tokens(["<b_60>", "<a_1>"]) is None
    assert parse_sid_tokens("<a_1>") is None


def test_real_ml100k_from_wheel(data_cfg):
    t = _build(data_cfg, path=None, max_history=50)
    s = t.stats
    assert (s["users"], s["items"], s["interactions"]) == (943, 1682, 100_000)
    assert (s["valid_samples"], s["test_samples"]) == (943, 943)
    assert s["train_targets"] == 100_000 - 3 * 943
    assert s["rejects_total"] == 0 and s["users_excluded_few_events"] == 0
    assert (s["user_events_min"], s["user_events_median"], s["user_events_max"]) == (20, 65, 737)
    assert s["rating_mean"] == pytest.approx(3.53, abs=0.005)
    assert t.users.num_rows == 943


@pytest.mark.skipif(not OFFICE.is_dir(), reason="shared Office slice not present (../shared/data)")
def test_real_office_slice(data_cfg):
    t = _build(
        data_cfg, source="minionerec", path=str(OFFICE), minionerec_train_from="valid",
        item_text_fields=["title", "description"], max_history=10,
    )  # fmt: skip
    s = t.stats
    assert s["items"] == 3459 and s["rejects_total"] == 0
    assert s["test_samples"] == 4866 and s["valid_samples"] == 4866
    assert t.train.num_rows == 4866 and s["items_without_sid"] == 0
    assert t.sid_codes.num_rows == 3459
    assert all(len(c) == 3 for c in t.sid_codes.column("codes").to_pylist())
    # every sample's history is the tail of the user's reconstructed events
    for row in t.test.to_pylist()[:500]:
        assert row["seen"][-len(row["history"]) :] == row["history"]


def test_a_missing_minionerec_folder_says_where_the_files_come_from(tmp_path):
    """configs/amazon_office.yaml points at a folder only the project's machines have."""
    from sgrec_ray.config import load_config
    from tests.conftest import REPO

    cfg = load_config(REPO / "configs" / "amazon_office.yaml", [f"data.path={tmp_path}/nope"])
    with pytest.raises(DataError, match="MiniOneRec's public repository") as err:
        build(cfg.data)
    assert "data/Amazon/" in str(err.value) and "data.path" in str(err.value)
    header = (REPO / "configs" / "amazon_office.yaml").read_text().split("\nrun:")[0]
    assert "github.com/AkaliKong/MiniOneRec" in header and "data/Amazon/" in header
