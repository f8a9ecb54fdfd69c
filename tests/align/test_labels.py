"""Label schema and validation: every bad row rejected with its reason, files, the time split."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from sgrec_ray import storage
from sgrec_ray.align.labels import (
    item_index,
    label_schema,
    read_labels,
    time_split,
    validate_labels,
)
from sgrec_ray.data.schema import REJECTS
from sgrec_ray.data.validate import DataError

ITEMS = pa.table(
    {
        "item_idx": pa.array(range(4), pa.int32()),
        "item_id": ["m0", "m1", "m2", "m3"],
        "title": ["Toy Story (1995)", "Heat (1995)", "Casino (1995)", "Alien (1979)"],
        "genres": ["Animation, Comedy", "Action, Crime", "Crime, Drama", "Sci-Fi"],
    }
)
ITEM_IDS = item_index(ITEMS)
ASPECTS = ["profile", "future", "novelty"]


def reasons(rejects: pa.Table) -> list[tuple[int, str]]:
    return list(
        zip(rejects.column("row").to_pylist(), rejects.column("reason").to_pylist(), strict=True)
    )


def test_item_index_maps_ids_to_rows():
    assert ITEM_IDS == {"m0": 0, "m1": 1, "m2": 2, "m3": 3}


def test_clean_labels_keep_order_and_get_both_item_ids():
    table = pa.table(
        {
            "user_id": ["u1", "u1", "u2"],
            "item_idx": [0, 3, 1],
            "profile": [1, 5, 2.5],
            "future": [3.0, 3.0, 2.0],
            "novelty": [4.0, 1.0, 5.0],
            "timestamp": [10, 20, 30],
            "rationale": ["fits", None, "  "],
            "extra": ["ignored", "ignored", "ignored"],
        }
    )
    clean, rejects = validate_labels(table, ASPECTS, 5, ITEM_IDS, default_source="file:x")
    assert rejects.num_rows == 0 and rejects.schema == REJECTS
    assert clean.schema == label_schema(ASPECTS)
    assert clean.column("item_id").to_pylist() == ["m0", "m3", "m1"]
    assert clean.column("item_idx").to_pylist() == [0, 3, 1]
    assert clean.column("profile").to_pylist() == [1.0, 5.0, 2.5]  # fractions are kept
    assert clean.column("rationale").to_pylist() == ["fits", None, None]
    assert clean.column("source").to_pylist() == ["file:x"] * 3
    assert clean.column("holistic").null_count == 3
    assert clean.column("timestamp").to_pylist() == [10, 20, 30]


def test_every_bad_row_is_rejected_with_its_reason():
    nan = float("nan")
    rows = [
        # user, item_id, item_idx, profile, future, novelty, holistic, timestamp
        ("u1", "m0", None, 4, 4, 4, 5, "100"),  # 0 good
        ("u1", "m1", None, 6, 4, 4, None, "100"),  # 1 above the scale
        ("u1", "m2", None, 4, 0, 4, None, "100"),  # 2 below the scale
        ("u2", "m0", None, 4, 4, nan, None, "100"),  # 3 NaN
        ("u2", "m1", None, None, 4, 4, None, "100"),  # 4 missing
        ("u2", "zzz", None, 4, 4, 4, None, "100"),  # 5 unknown item
        ("u1", "m0", None, 1, 1, 1, None, "100"),  # 6 duplicate of row 0
        (None, "m3", None, 4, 4, 4, None, "100"),  # 7 no user
        ("u3", "m3", None, 4, 4, 4, 7, "100"),  # 8 holistic off the scale
        ("u3", "m2", None, 4, 4, 4, None, "yesterday"),  # 9 bad timestamp
        ("u3", "m1", 2, 4, 4, 4, None, "100"),  # 10 item_id and item_idx disagree
        ("u3", None, 99, 4, 4, 4, None, "100"),  # 11 unknown item_idx
        ("u3", None, None, 4, 4, 4, None, "100"),  # 12 no item at all
        ("u4", None, 3, 2, 3, 4, None, None),  # 13 good, by item_idx, no time
    ]
    names = ["user_id", "item_id", "item_idx", *ASPECTS, "holistic", "timestamp"]
    table = pa.table({n: [r[k] for r in rows] for k, n in enumerate(names)})
    clean, rejects = validate_labels(table, ASPECTS, 5, ITEM_IDS, uri="mine.parquet")
    assert reasons(rejects) == [
        (1, "score_out_of_scale"),
        (2, "score_out_of_scale"),
        (3, "missing_score"),
        (4, "missing_score"),
        (5, "unknown_item"),
        (6, "duplicate_label"),
        (7, "missing_user_id"),
        (8, "score_out_of_scale"),
        (9, "bad_timestamp"),
        (10, "item_mismatch"),
        (11, "unknown_item"),
        (12, "missing_item_id"),
    ]
    assert clean.num_rows + rejects.num_rows == table.num_rows  # nothing lost
    assert clean.select(["user_id", "item_id", "profile", "holistic", "timestamp"]).to_pylist() == [
        {"user_id": "u1", "item_id": "m0", "profile": 4.0, "holistic": 5.0, "timestamp": 100},
        {"user_id": "u4", "item_id": "m3", "profile": 2.0, "holistic": None, "timestamp": None},
    ]
    assert set(rejects.column("source").to_pylist()) == {"mine.parquet"}
    first = json.loads(rejects.column("record")[0].as_py())
    assert (first["user_id"], first["item_id"], first["profile"]) == ("u1", "m1", 6)


def test_text_scores_as_a_csv_gives_them():
    table = pa.table(
        {
            "user_id": ["u1", "u1", "u1", "u1", "u2", "u2"],
            "item_id": ["m0", "m1", "m2", "m3", "m0", "m1"],
            "profile": ["4", " 2.0 ", "four", "", "inf", "1.5"],
            "future": ["3"] * 6,
            "novelty": ["3"] * 6,
        }
    )
    clean, rejects = validate_labels(table, ASPECTS, 5, ITEM_IDS)
    assert reasons(rejects) == [(2, "bad_score"), (3, "missing_score"), (4, "bad_score")]
    assert clean.column("profile").to_pylist() == [4.0, 2.0, 1.5]


def test_missing_columns_fail_at_once_naming_them():
    table = pa.table({"user_id": ["u1"], "item_id": ["m0"], "profile": [3], "future": [3]})
    with pytest.raises(DataError, match=r"missing required column\(s\) \['novelty'\]") as err:
        validate_labels(table, ASPECTS, 5, ITEM_IDS, uri="mine.jsonl")
    assert isinstance(err.value, ValueError) and "mine.jsonl" in str(err.value)
    no_item = pa.table({"user_id": ["u1"], "profile": [3], "future": [3], "novelty": [3]})
    with pytest.raises(DataError, match="'item_id or item_idx'"):
        validate_labels(no_item, ASPECTS, 5, ITEM_IDS)


def test_aspects_and_scale_are_the_judges():
    table = pa.table({"user_id": ["u1"], "item_id": ["m0"], "mood": [3]})
    with pytest.raises(ValueError, match="allowed"):
        validate_labels(table, ["mood"], 5, ITEM_IDS)
    with pytest.raises(ValueError, match=r"judge\.scale 10"):
        validate_labels(table, ["profile"], 10, ITEM_IDS)


def test_error_mode_stops_at_the_first_bad_row():
    table = pa.table(
        {"user_id": ["u1", "u1"], "item_id": ["m0", "m1"], "profile": [3, 9], "future": [3, 3]}
    )
    with pytest.raises(DataError, match=r"row 1 .*score_out_of_scale.*profile=9"):
        validate_labels(table, ["profile", "future"], 5, ITEM_IDS, on_bad_rows="error")


def test_read_labels_parquet_jsonl_and_csv(tmp_path):
    rows = [
        {"user_id": "u1", "item_id": "m0", "profile": 4, "future": 2, "novelty": 5, "timestamp": 7},
        {"user_id": "u2", "item_id": "m3", "profile": 1, "future": 1, "novelty": 1, "timestamp": 9},
    ]
    parquet = str(tmp_path / "labels.parquet")
    storage.write_table(parquet, pa.Table.from_pylist(rows))
    from_parquet, rejects = validate_labels(read_labels(parquet), ASPECTS, 5, ITEM_IDS)
    assert rejects.num_rows == 0
    assert from_parquet.column("novelty").to_pylist() == [5.0, 1.0]

    jsonl = tmp_path / "labels.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines += ["", json.dumps(rows[0] | {"item_id": "m1", "profile": "four", "source": "human:ana"})]
    jsonl.write_text("\n".join(lines) + "\n")
    table = read_labels(str(jsonl))
    assert table.column("profile").type == pa.string()  # 4 and "four": left to validation
    clean, rejects = validate_labels(table, ASPECTS, 5, ITEM_IDS)
    assert clean.column("profile").to_pylist() == [4.0, 1.0]
    assert reasons(rejects) == [(2, "bad_score")]

    csv = tmp_path / "labels.csv"
    csv.write_text("user_id,item_id,profile,future,novelty\n007,m2,3,3,NaN\n007,m1,3,3,2\n")
    clean, rejects = validate_labels(read_labels(str(csv)), ASPECTS, 5, ITEM_IDS)
    assert clean.column("user_id").to_pylist() == ["007"]  # ids stay text
    assert reasons(rejects) == [(0, "missing_score")]


def test_broken_jsonl_names_the_line(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"user_id": "u1"}\n{"user_id": \n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        read_labels(str(path))
    path.write_text('{"user_id": "u1"}\n[1, 2]\n')
    with pytest.raises(DataError, match="line 2: expected a JSON object"):
        read_labels(str(path))
    with pytest.raises(DataError, match="not found"):
        read_labels(str(tmp_path / "none.jsonl"))


def _labels(stamps: list[int | None]) -> pa.Table:
    n = len(stamps)
    raw = pa.table(
        {
            "user_id": [f"u{k}" for k in range(n)],
            "item_idx": [k % 4 for k in range(n)],
            "profile": [3] * n,
            "timestamp": pa.array(stamps, pa.int64()),
        }
    )
    clean, rejects = validate_labels(raw, ["profile"], 5, ITEM_IDS)
    assert rejects.num_rows == 0
    return clean


def test_time_split_holds_out_the_latest_and_keeps_ties_together():
    labels = _labels([5, 1, 3, 3, 9])
    split, cutoff = time_split(labels, 0.4)  # ceil(0.4 * 5) = 2 latest: 5 and 9
    assert cutoff == 5
    assert split.column("split").to_pylist() == ["heldout", "train", "train", "train", "heldout"]
    assert split.drop_columns(["split"]).equals(labels)  # same rows, same order
    split, cutoff = time_split(labels, 0.5)  # 3 latest would split the tie at 3: both held out
    assert cutoff == 3
    assert split.column("split").to_pylist().count("heldout") == 4
    _, cutoff = time_split(labels, 0.0)
    assert cutoff == 10


def test_time_split_without_time_uses_row_order_and_rejects_mixtures():
    split, cutoff = time_split(_labels([None, None, None, None]), 0.25)
    assert cutoff is None and split.column("split").to_pylist() == ["train"] * 3 + ["heldout"]
    with pytest.raises(ValueError, match="all present or all absent: 1 of 3"):
        time_split(_labels([1, None, 3]), 0.2)
    with pytest.raises(ValueError, match=r"align\.heldout_fraction"):
        time_split(_labels([1, 2]), 1.0)
