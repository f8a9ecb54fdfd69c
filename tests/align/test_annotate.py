"""Annotation round trip: the real SmolLM2 judge drafts, a person edits the CSV, the import keeps
provenance; every way a reviewed sheet can be wrong becomes a reject with its reason."""

from __future__ import annotations

import csv
import dataclasses
import json

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sgrec_ray.align.annotate import (
    draft,
    export_sheet,
    import_sheet,
    sample_requests,
    sheet_columns,
    whole_level,
)
from sgrec_ray.align.labels import item_index, validate_labels
from sgrec_ray.config import JudgeSection
from sgrec_ray.data.validate import DataError
from sgrec_ray.judge.rows import JudgeRequest
from sgrec_ray.judge.scoring import Judge

ITEMS = pa.table(
    {
        "item_idx": pa.array(range(6), pa.int32()),
        "item_id": [f"m{i}" for i in range(6)],
        "title": [
            "Toy Story (1995)",
            "Heat (1995)",
            "Casino (1995)",
            "Babe (1995)",
            "Alien (1979)",
            "Fargo (1996)",
        ],
        "text": [""] * 6,
        "genres": [
            "Animation",
            "Action, Crime",
            "Crime, Drama",
            "Children's",
            "Sci-Fi",
            "Crime, Thriller",
        ],
    }
)
ITEM_IDS = item_index(ITEMS)
EVENTS = [  # (user, item, timestamp); u3 has one event, so nothing of u3 can be drafted
    ("u1", 0, 100),
    ("u1", 1, 200),
    ("u1", 2, 300),
    ("u1", 3, 400),
    ("u2", 5, 100),
    ("u2", 2, 150),
    ("u2", 1, 250),
    ("u2", 4, 350),
    ("u3", 3, 120),
]
INTERACTIONS = pa.table(
    {
        "user_id": [e[0] for e in EVENTS],
        "item_idx": pa.array([e[1] for e in EVENTS], pa.int32()),
        "timestamp": pa.array([e[2] for e in EVENTS], pa.int64()),
        "rating": pa.array([4.0] * len(EVENTS), pa.float32()),
    }
)
ASPECTS = ["profile", "future", "novelty"]
TEACHER_CFG = JudgeSection(evidence=True, evidence_max_tokens=6, batch_size=4)


@pytest.fixture(scope="module")
def judge():
    import torch

    # One thread, as the aggregate stage does: on a 2-core box shared with other work, two torch
    # threads fight for cores and the draft (12 short generations) runs several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Judge(TEACHER_CFG, ITEMS)
    torch.set_num_threads(threads)


def read_sheet(path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def write_sheet(path, rows: list[dict[str, str]], encoding: str = "utf-8") -> None:
    with open(path, "w", newline="", encoding=encoding) as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def reasons(rejects: pa.Table) -> list[tuple[int, str]]:
    return list(
        zip(rejects.column("row").to_pylist(), rejects.column("reason").to_pylist(), strict=True)
    )


def test_sample_requests_take_real_events_with_their_past():
    requests = sample_requests(INTERACTIONS, n_users=2, items_per_user=2, max_history=10, seed=0)
    assert requests == sample_requests(INTERACTIONS, 2, 2, 10, seed=0)  # seeded
    assert [r.user_id for r in requests] == ["u1", "u1", "u2", "u2"]  # u3 has no past to judge
    times = {(u, i): t for u, i, t in EVENTS}
    for r in requests:
        assert times[(r.user_id, r.item_idx)] == r.timestamp
        past = [i for u, i, t in EVENTS if u == r.user_id and t < r.timestamp]
        assert list(r.history) == past and past  # strictly earlier, oldest first, never empty
    assert len(sample_requests(INTERACTIONS, 5, 1, 2, seed=1)) == 2  # fewer users than asked
    only_u3 = INTERACTIONS.filter(pc.equal(INTERACTIONS.column("user_id"), "u3"))
    assert sample_requests(only_u3, 2, 2, 10) == []


@pytest.mark.slow  # ~91 s on 2 cores: `make test-slow` (CI) runs it
def test_round_trip_draft_export_edit_import(judge, tmp_path):
    requests = sample_requests(INTERACTIONS, n_users=2, items_per_user=2, max_history=10)
    broken = JudgeRequest("u1", [0], 99, 500)  # an item the catalogue lacks: the judge fails it
    labels, rejects = draft(judge, [*requests, broken], ITEMS)

    assert reasons(rejects) == [(4, "judge_failed")]
    assert json.loads(rejects.column("record")[0].as_py())["why"] == "unknown item_idx 99"
    assert labels.num_rows == 4
    assert set(labels.column("source").to_pylist()) == {"teacher:smollm2-135m-gguf"}
    assert labels.column("timestamp").to_pylist() == [r.timestamp for r in requests]
    # Scores do not depend on evidence: a plain judge on the same model gives the draft's levels.
    plain = Judge(dataclasses.replace(TEACHER_CFG, evidence=False), ITEMS, engine=judge.engine)
    expected = plain.score(requests)
    for row, res in zip(labels.to_pylist(), expected, strict=True):
        assert [row[a] for a in ASPECTS] == [whole_level(res.aspects[a], 5) for a in ASPECTS]
        assert row["rationale"].split("\n")[0].startswith("Profile: ")

    path = tmp_path / "review.csv"
    export_sheet(labels, str(path), ITEMS, INTERACTIONS)
    sheet = read_sheet(path)
    assert list(sheet[0]) == sheet_columns(ASPECTS) and len(sheet) == 4
    first = requests[0]
    assert sheet[0]["item_id"] == f"m{first.item_idx}"
    assert sheet[0]["title"].startswith(ITEMS.column("title")[first.item_idx].as_py() + " [")
    assert sheet[0]["history"].count(" | ") == len(first.history) - 1
    assert sheet[0]["proposed_profile"] == f"{labels.column('profile')[0].as_py():g}"
    assert sheet[0]["rationale"] == labels.column("rationale")[0].as_py()  # newlines survive

    corrected = "1" if sheet[0]["proposed_profile"] != "1" else "5"
    sheet[0] |= {"reviewed_profile": corrected, "reviewer": "ana"}  # corrected one score
    sheet[1] |= {"accept": "yes", "reviewer": "ben"}  # accepted as drafted
    sheet[3] |= {"reviewed_future": "four", "reviewer": "ana"}  # garbage: rejected, not lost
    write_sheet(path, sheet)

    imported, rejects = import_sheet(str(path), ASPECTS, 5, ITEM_IDS)
    assert reasons(rejects) == [(3, "bad_score")]
    assert json.loads(rejects.column("record")[0].as_py())["reviewed_future"] == "four"
    assert imported.column("source").to_pylist() == [
        "human:ana",
        "human:ben",
        "teacher:smollm2-135m-gguf",
    ]
    drafted = labels.to_pylist()
    got = imported.to_pylist()
    assert got[0]["profile"] == float(corrected)
    assert got[0]["future"] == drafted[0]["future"]  # what the reviewer left keeps the proposal
    for k in (1, 2):
        assert {a: got[k][a] for a in ASPECTS} == {a: drafted[k][a] for a in ASPECTS}
    for k in range(3):
        for key in ("user_id", "item_idx", "item_id", "timestamp", "rationale"):
            assert got[k][key] == drafted[k][key], key


def test_draft_needs_the_judges_evidence(judge):
    plain = Judge(dataclasses.replace(TEACHER_CFG, evidence=False), ITEMS, engine=judge.engine)
    with pytest.raises(ValueError, match=r"judge\.evidence=true"):
        draft(plain, [JudgeRequest("u1", [0], 1, 200)], ITEMS)


def _teacher_labels() -> pa.Table:
    rows = [
        {
            "user_id": f"u{u}",
            "item_id": f"m{i}",
            "profile": 3,
            "future": 4,
            "novelty": 2,
            "rationale": "Profile: fits.\nFuture: maybe.",
            "source": "teacher:big-model",
            "timestamp": 100 * u + i,
        }
        for u in range(1, 5)
        for i in range(2)
    ]
    labels, rejects = validate_labels(pa.Table.from_pylist(rows), ASPECTS, 5, ITEM_IDS)
    assert rejects.num_rows == 0
    return labels


def test_every_bad_review_is_a_reject_with_its_reason(tmp_path):
    path = tmp_path / "review.csv"
    export_sheet(_teacher_labels(), str(path), ITEMS)
    sheet = read_sheet(path)
    assert {r["history"] for r in sheet} == {""}  # no interactions given: no history shown
    sheet[0] |= {"accept": "no"}  # reviewer throws the draft away
    sheet[1] |= {"accept": "No", "reviewed_profile": "2", "reviewer": "ana"}  # replaces it
    sheet[2] |= {"accept": "maybe", "reviewer": "ana"}
    sheet[3] |= {"accept": "yes"}  # no reviewer named
    sheet[4] |= {"reviewed_novelty": "9", "reviewer": "ana"}
    sheet[5] |= {"item_id": "zzz", "accept": "y", "reviewer": "ana"}
    sheet[6] |= {"accept": "Y", "reviewer": " cy "}
    write_sheet(path, sheet, encoding="utf-8-sig")  # as a spreadsheet program saves it

    labels, rejects = import_sheet(str(path), ASPECTS, 5, ITEM_IDS)
    assert reasons(rejects) == [
        (0, "rejected_by_reviewer"),
        (2, "bad_accept_flag"),
        (3, "missing_reviewer"),
        (4, "score_out_of_scale"),
        (5, "unknown_item"),
    ]
    assert set(rejects.column("source").to_pylist()) == {str(path)}
    assert labels.column("source").to_pylist() == ["human:ana", "human:cy", "teacher:big-model"]
    assert labels.column("profile").to_pylist() == [2.0, 3.0, 3.0]
    assert labels.column("timestamp").to_pylist() == [101, 400, 401]
    assert labels.column("rationale").to_pylist() == ["Profile: fits.\nFuture: maybe."] * 3

    labels, rejects = import_sheet(str(path), ASPECTS, 5, ITEM_IDS, default_reviewer="lead")
    assert (3, "missing_reviewer") not in reasons(rejects)
    assert "human:lead" in labels.column("source").to_pylist()


def test_a_sheet_without_a_needed_column_fails_naming_it(tmp_path):
    path = tmp_path / "review.csv"
    export_sheet(_teacher_labels(), str(path), ITEMS)
    sheet = [{k: v for k, v in r.items() if k != "proposed_novelty"} for r in read_sheet(path)]
    write_sheet(path, sheet)
    with pytest.raises(DataError, match=r"missing required column\(s\) \['proposed_novelty'\]"):
        import_sheet(str(path), ASPECTS, 5, ITEM_IDS)
