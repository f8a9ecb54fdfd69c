"""Bad input: missing columns fail at once; bad rows are counted with a reason, or stop the run."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from sgrec_ray.config import ColumnMap
from sgrec_ray.data import validate as v
from sgrec_ray.data.stage import build
from sgrec_ray.data.validate import DataError

from .conftest import FIXTURES

ITEMS = "item_id,title\nA,Pen\nB,Paper\nC,Ink\n"
# row numbers are 0-based data rows (header not counted)
BAD_LOG = (
    "user_id,item_id,timestamp,rating\n"
    "u1,A,100,5\n"  # 0 ok
    ",B,101,4\n"  # 1 missing user id
    "u1,,102,4\n"  # 2 missing item id
    "u1,B,yesterday,4\n"  # 3 bad timestamp
    "u1,B,,4\n"  # 4 bad (empty) timestamp
    "u1,B,103,great\n"  # 5 bad rating
    "u1,Z,104,3\n"  # 6 unknown item
    "u1,A,100,2\n"  # 7 duplicate of row 0 (same user, item, timestamp)
    "u1,B,105,\n"  # 8 ok (no rating is fine)
    "u1,C,106,3\n"  # 9 ok
)


def _write(tmp_path, log=BAD_LOG, items=ITEMS):
    (tmp_path / "log.csv").write_text(log)
    (tmp_path / "items.csv").write_text(items)
    return tmp_path / "log.csv", tmp_path / "items.csv"


def _cfg(data_cfg, log, items, **fields):
    base = {"source": "generic", "path": str(log), "items_path": str(items), "max_users": None}
    return data_cfg(**{**base, "item_text_fields": ["title"], **fields}).data


def test_bad_rows_are_counted_with_reasons(data_cfg, tmp_path):
    log, items = _write(tmp_path)
    t = build(_cfg(data_cfg, log, items))
    assert t.stats["rejects"] == {
        "bad_rating": 1, "bad_timestamp": 2, "duplicate_event": 1, "missing_item_id": 1,
        "missing_user_id": 1, "unknown_item": 1,
    }  # fmt: skip
    assert t.stats["rejects_total"] == 7 and t.stats["interactions"] == 3
    rows = t.rejects.to_pylist()
    assert [(r["row"], r["reason"]) for r in rows] == [
        (1, "missing_user_id"), (2, "missing_item_id"), (3, "bad_timestamp"),
        (4, "bad_timestamp"), (5, "bad_rating"), (6, "unknown_item"), (7, "duplicate_event"),
    ]  # fmt: skip
    assert all(r["source"] == str(log) for r in rows)
    assert json.loads(rows[2]["record"]) == {
        "user_id": "u1", "item_id": "B", "timestamp": "yesterday", "rating": "4",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("drop_row", "reason"),
    [(1, "missing_user_id"), (3, "bad_timestamp"), (5, "bad_rating"), (6, "unknown_item"),
     (7, "duplicate_event")],
)  # fmt: skip
def test_error_mode_names_file_row_and_reason(data_cfg, tmp_path, drop_row, reason):
    lines = BAD_LOG.splitlines()
    # keep the header, the good rows and exactly one bad row
    keep = [0, 1, 9, 10, drop_row + 1]
    log, items = _write(tmp_path, "\n".join(lines[i] for i in sorted(set(keep))) + "\n")
    row = sorted(set(keep)).index(drop_row + 1) - 1
    with pytest.raises(DataError) as err:
        build(_cfg(data_cfg, log, items, on_bad_rows="error"))
    msg = str(err.value)
    assert str(log) in msg and f"row {row} " in msg and reason in msg


def test_missing_column_names_it_and_the_file(data_cfg, tmp_path):
    log, items = _write(tmp_path, "user_id,item_id,rating\nu1,A,3\n")
    with pytest.raises(DataError, match=r"missing required column\(s\) \['timestamp'\]") as err:
        build(_cfg(data_cfg, log, items))
    assert str(log) in str(err.value)
    # a mapped name that is not there is named as mapped
    log, items = _write(tmp_path)
    with pytest.raises(DataError, match=r"\['when'\]"):
        build(_cfg(data_cfg, log, items, columns=ColumnMap(timestamp="when")))
    # a text field that the catalogue lacks
    with pytest.raises(DataError, match=r"\['genres'\]") as err:
        build(_cfg(data_cfg, log, items, item_text_fields=["title", "genres"]))
    assert str(items) in str(err.value)


def test_missing_column_in_atomic_file(data_cfg, tmp_path):
    (tmp_path / "x.inter").write_text("user_id:token\titem_id:token\trating:float\n1\t1\t3\n")
    (tmp_path / "x.item").write_text("item_id:token\tmovie_title:token_seq\n1\tA\n")
    with pytest.raises(DataError, match=r"x\.inter: missing required column\(s\) \['timestamp'\]"):
        build(data_cfg(path=str(tmp_path), max_users=None).data)


def test_catalogue_rows_rejected(data_cfg, tmp_path):
    log, items = _write(
        tmp_path, items="item_id,title\nA,Pen\n,NoId\nA,Pen again\nB,Paper\nC,Ink\n"
    )
    t = build(_cfg(data_cfg, log, items))
    item_rejects = [r for r in t.rejects.to_pylist() if r["source"] == str(items)]
    assert [(r["row"], r["reason"]) for r in item_rejects] == [
        (1, "missing_item_id"), (2, "duplicate_item"),
    ]  # fmt: skip
    assert t.items.column("title").to_pylist() == ["Pen", "Paper", "Ink"]  # first A kept


def test_minionerec_bad_rows(data_cfg, tmp_path):
    import shutil

    folder = tmp_path / "mor"
    shutil.copytree(FIXTURES / "minionerec", folder)
    csv = folder / "valid" / "Tiny_5.csv"
    text = csv.read_text()
    text += 'U3,[],Pen,"[0, 99]",1,[],x\n'  # unknown item 99
    text += "U3,[],Pen,not-a-list,1,[],x\n"  # bad list
    text += 'U3,[],Pen,"[]",1,[],x\n'  # empty history
    csv.write_text(text)
    t = build(data_cfg(source="minionerec", path=str(folder), item_text_fields=["title"]).data)
    assert t.stats["rejects"] == {"bad_list": 1, "empty_history": 1, "unknown_item": 1}
    assert [r["row"] for r in t.rejects.to_pylist()] == [2, 3, 4]
    with pytest.raises(DataError, match=r"Tiny_5\.csv: row 2 .*unknown_item"):
        build(
            data_cfg(
                source="minionerec", path=str(folder), item_text_fields=["title"],
                on_bad_rows="error",
            ).data
        )  # fmt: skip


def test_parse_timestamp():
    assert v.parse_timestamp(881250949) == 881250949
    assert v.parse_timestamp("881250949") == 881250949
    assert v.parse_timestamp(" 881250949.0 ") == 881250949
    assert v.parse_timestamp("1970-01-01T00:01:00Z") == 60
    assert v.parse_timestamp("1970-01-01 00:01:00+01:00") == 60 - 3600
    assert v.parse_timestamp("1970-01-02") == 86400
    assert v.parse_timestamp(dt.datetime(1970, 1, 1, 0, 0, 5)) == 5  # naive = UTC
    assert v.parse_timestamp(dt.date(1970, 1, 2)) == 86400
    for bad in (None, "", "soon", float("nan"), float("inf"), True, [1]):
        assert v.parse_timestamp(bad) is None, bad


def test_parse_number_and_id():
    assert v.parse_number("4.5") == 4.5 and v.parse_number(3) == 3.0
    assert v.parse_number(None) is None and v.parse_number("") is None
    assert v.parse_number(float("nan")) is None
    assert v.parse_number("great") is v._BAD and v.parse_number(True) is v._BAD
    assert v.parse_id(7.0) == "7" and v.parse_id(" a ") == "a" and v.parse_id("") is None


def test_rejects_error_mode_rejects_nothing_silently():
    r = v.Rejects("reject")
    r.add("f.csv", 3, "bad_timestamp", {"a": 1})
    assert r.counts == {"bad_timestamp": 1} and r.table().num_rows == 1
    with pytest.raises(ValueError, match="on_bad_rows"):
        v.Rejects("ignore")


def test_a_catalogue_with_only_item_id_and_title_passes_by_default(data_cfg, tmp_path, caplog):
    """data.item_text_fields unset: the catalogue's own text columns (title required); the
    choice is logged. A catalogue with a description uses it too; one without a title fails
    naming the file and the key to set."""
    log, items = _write(
        tmp_path, log="user_id,item_id,timestamp,rating\nu1,A,1,5\nu1,B,2,4\nu1,C,3,3\n"
    )
    with caplog.at_level("INFO"):
        t = build(_cfg(data_cfg, log, items, item_text_fields=None))
    assert t.items.column("text").to_pylist() == ["Pen", "Paper", "Ink"]
    assert "item text from ['title']" in caplog.text
    described = "item_id,title,description,url\nA,Pen,Blue ink,x\nB,Paper,A4,y\nC,Ink,Black,z\n"
    log, items = _write(
        tmp_path,
        log="user_id,item_id,timestamp,rating\nu1,A,1,5\nu1,B,2,4\nu1,C,3,3\n",
        items=described,
    )
    t = build(_cfg(data_cfg, log, items, item_text_fields=None))
    assert t.items.column("text").to_pylist()[0] == "Pen. Description: Blue ink"
    log, items = _write(tmp_path, items="item_id,name\nA,Pen\nB,Paper\nC,Ink\n")
    with pytest.raises(DataError, match=r"items\.csv.*title.*data\.item_text_fields"):
        build(_cfg(data_cfg, log, items, item_text_fields=None))
