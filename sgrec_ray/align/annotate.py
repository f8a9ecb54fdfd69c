"""The annotation round trip: a teacher drafts labels, people review them, the sheet comes back.

::

    sample_requests → draft → export_sheet → (a person edits the CSV) → import_sheet → labels

The teacher is the judge itself (:class:`sgrec_ray.judge.scoring.Judge` with ``judge.evidence:
true``): the same prompts and scoring as the judge stage, so pointing ``judge.model`` at a large
model makes it a teacher, and its one-sentence evidence per aspect becomes the rationale a reviewer
reads. Drafted scores are whole levels (the judge's expected score rounded the way its evidence
prompt rounds it), so the rationale explains exactly the level shown.

The review sheet is a CSV, one row per (user, item): who and what (``user_id``, ``item_id``,
``title``, the user's recent ``history``), the teacher's ``proposed_<aspect>`` scores and
``rationale``, empty ``reviewed_<aspect>`` columns for corrections, ``reviewer`` and ``accept``.
On import a row becomes:

- ``human:<reviewer>`` when the reviewer accepted it (``accept`` yes) or corrected a score
  (corrected scores replace proposed ones); a reviewer who corrects a score should also fix or
  clear the rationale, which still explains the teacher's level;
- the row's own ``source`` (``teacher:<model>``) when nobody touched it;
- a reject when the reviewer said ``accept`` no without corrections (``rejected_by_reviewer``),
  when a reviewed row names no reviewer (``missing_reviewer``: provenance is never guessed), when
  ``accept`` is not a yes/no word, or when :func:`~sgrec_ray.align.labels.check_labels` finds a
  bad score, item or timestamp. Every reject keeps the sheet row as the reviewer wrote it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from sgrec_ray import storage
from sgrec_ray.align.labels import check_labels, item_index, label_schema
from sgrec_ray.data.loaders import natural_key
from sgrec_ray.data.validate import Rejects, require_columns
from sgrec_ray.judge.prompts import ASPECTS, ItemTexts
from sgrec_ray.judge.rows import JudgeRequest

if TYPE_CHECKING:
    from sgrec_ray.judge.scoring import Judge

# Reasons specific to drafting and review (stable strings, counted and tested).
JUDGE_FAILED = "judge_failed"
BAD_ACCEPT_FLAG = "bad_accept_flag"
REJECTED_BY_REVIEWER = "rejected_by_reviewer"
MISSING_REVIEWER = "missing_reviewer"

YES = frozenset({"y", "yes", "true", "1", "x", "ok", "accept", "accepted"})
NO = frozenset({"n", "no", "false", "0", "reject", "rejected"})
HISTORY_SEP = " | "


def sheet_columns(aspects: Sequence[str]) -> list[str]:
    """Review sheet columns, in the order a reviewer reads them; machine columns last."""
    return [
        "user_id",
        "item_id",
        "title",
        "history",
        *[f"proposed_{a}" for a in aspects],
        "rationale",
        *[f"reviewed_{a}" for a in aspects],
        "reviewer",
        "accept",
        "source",
        "timestamp",
    ]


# --------------------------------------------------------------------------------------------
# Sampling and drafting


class UserEvents:
    """Each user's events in time order (ties keep the data stage's order), for history look-ups."""

    def __init__(self, interactions: pa.Table) -> None:
        df = interactions.select(["user_id", "item_idx", "timestamp"]).to_pandas()
        df = df.sort_values(["user_id", "timestamp"], kind="stable")
        self.events: dict[str, tuple[np.ndarray, np.ndarray]] = {
            str(user): (g["timestamp"].to_numpy(), g["item_idx"].to_numpy())
            for user, g in df.groupby("user_id", sort=False)
        }

    def before(self, user_id: str, timestamp: int | None, n: int) -> list[int]:
        """The user's last ``n`` items strictly before ``timestamp`` (None: all), oldest first.

        Strictly before: items of the same second are not "already seen" when judging this one.
        """
        stamps, items = self.events.get(user_id, (np.zeros(0), np.zeros(0, np.int64)))
        end = len(items) if timestamp is None else int(np.searchsorted(stamps, timestamp, "left"))
        return [int(i) for i in items[max(0, end - n) : end]]


def sample_requests(
    interactions: pa.Table, n_users: int, items_per_user: int, max_history: int, seed: int = 0
) -> list[JudgeRequest]:
    """A seeded sample of real (user, item, time) events to draft labels for.

    Only events with an earlier event of the same user qualify (a teacher cannot judge fit with an
    empty history). Each request's history is the user's ``max_history`` items strictly before the
    event, and its timestamp that of the event (the label's time for the split).
    """
    events = UserEvents(interactions)
    eligible = {
        u: [k for k, t in enumerate(stamps) if t > stamps[0]]
        for u, (stamps, _) in events.events.items()
    }
    users = sorted((u for u, ks in eligible.items() if ks), key=natural_key)
    rng = np.random.default_rng(seed)
    chosen = sorted(
        rng.choice(users, size=min(n_users, len(users)), replace=False), key=natural_key
    )
    requests = []
    for user in chosen:
        stamps, items = events.events[user]
        picks = eligible[user]
        size = min(items_per_user, len(picks))
        for k in sorted(rng.choice(picks, size=size, replace=False)):
            stamp = int(stamps[k])
            history = events.before(user, stamp, max_history)
            requests.append(JudgeRequest(str(user), history, int(items[k]), stamp))
    return requests


def teacher_source(judge: Judge) -> str:
    """``teacher:<model>`` (plus the adapter when one is loaded): who drafted a label."""
    adapter = judge.cfg.adapter
    return f"teacher:{judge.model}" + (f"+adapter:{adapter}" if adapter else "")


def whole_level(score: float, scale: int) -> float:
    """The judge's expected score as a level, rounded exactly as ``prompts.evidence_prompt`` does,
    so the drafted rationale (which opens with "Why Profile <level>:") explains this level."""
    return float(min(scale, max(1, round(score))))


def rationale_text(evidence: Mapping[str, str] | None, aspects: Sequence[str]) -> str | None:
    """The judge's evidence as one line per aspect ("Profile: <sentence>"), or None if it has none."""
    lines = [f"{ASPECTS[a][0]}: {evidence[a]}" for a in aspects if evidence and evidence.get(a)]
    return "\n".join(lines) or None


def draft(
    judge: Judge, requests: Sequence[JudgeRequest], items: pa.Table
) -> tuple[pa.Table, pa.Table]:
    """Teacher-drafted labels for ``requests``: whole-level scores + rationale per (user, item).

    Args:
        judge: the teacher, built with ``judge.evidence: true`` (a reviewer needs its reasons).
        requests: pairs to draft (:func:`sample_requests`); the timestamp becomes the label's.
        items: the items table the judge was built on (for item ids).

    Returns:
        (labels in ``label_schema(judge.aspects)``, rejects: requests the judge failed on, with
        the judge's reason in the record, and any row check_labels refuses).
    """
    if not judge.cfg.evidence:
        raise ValueError(
            "draft needs judge.evidence=true: reviewers check the teacher's reasons, not only its "
            "numbers"
        )
    aspects, scale = list(judge.spec.aspects), judge.spec.scale
    source = teacher_source(judge)
    rejects = Rejects()
    rows: list[dict[str, Any]] = []
    numbers: list[int] = []
    for k, (req, res) in enumerate(zip(requests, judge.score(requests), strict=True)):
        if res.status != "ok":
            record = {"user_id": req.user_id, "item_idx": int(req.item_idx), "why": res.reason}
            rejects.add(source, k, JUDGE_FAILED, record, str(res.reason))
            continue
        scores = {a: whole_level(res.aspects[a], scale) for a in aspects}
        rationale = rationale_text(res.evidence, aspects)
        rows.append(
            {"user_id": req.user_id, "item_idx": int(req.item_idx), "timestamp": req.timestamp}
            | scores
            | {"rationale": rationale, "source": source}
        )
        numbers.append(k)
    raw = pa.Table.from_pylist(rows, schema=label_schema(aspects))
    clean = check_labels(raw, aspects, scale, item_index(items), rejects, uri=source, rows=numbers)
    return clean, rejects.table()


# --------------------------------------------------------------------------------------------
# The review sheet


def export_sheet(
    labels: pa.Table,
    uri: str,
    items: pa.Table,
    interactions: pa.Table | None = None,
    history_items: int = 5,
) -> None:
    """Write ``labels`` as a review CSV at ``uri`` (any storage URI), one row per label.

    ``title`` is the item's short text ("Title [genres]"). ``history`` lists the user's last
    ``history_items`` items strictly before the label's time (the latest ones for a label without
    a time; empty without ``interactions``): a reviewer cannot judge fit with a history they
    cannot see.
    """
    aspects = [c for c in labels.column_names if c in ASPECTS]
    texts = ItemTexts(items)
    events = UserEvents(interactions) if interactions is not None else None
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(sheet_columns(aspects))
    for row in labels.to_pylist():
        history = events.before(row["user_id"], row["timestamp"], history_items) if events else []
        writer.writerow(
            [
                row["user_id"],
                row["item_id"],
                texts.short[row["item_idx"]],
                HISTORY_SEP.join(texts.short[i] for i in history),
                *[_cell(row[a]) for a in aspects],
                row["rationale"] or "",
                *[""] * len(aspects),
                "",
                "",
                row["source"],
                _cell(row["timestamp"]),
            ]
        )
    storage.write_text(uri, buffer.getvalue())


def _cell(value: Any) -> str:
    """A number as a spreadsheet shows it: 4.0 → "4", 3.5 → "3.5", None → ""."""
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def import_sheet(
    uri: str,
    aspects: Sequence[str],
    scale: int,
    item_ids: Mapping[str, int],
    *,
    default_reviewer: str | None = None,
) -> tuple[pa.Table, pa.Table]:
    """A reviewed sheet → (labels with provenance, rejects); rules in the module docstring.

    Args:
        uri: the CSV (any storage URI; a BOM from a spreadsheet program is fine).
        aspects, scale: ``judge.aspects`` and ``judge.scale``.
        item_ids: the catalogue, item_id → item_idx (:func:`~sgrec_ray.align.labels.item_index`).
        default_reviewer: the reviewer of reviewed rows whose ``reviewer`` cell is empty (one
            person reviewed the whole sheet); None = such rows are rejected.

    Raises:
        DataError naming the missing columns when the sheet lacks user_id, item_id or a
        ``proposed_<aspect>`` column.
    """
    # The csv module, not pyarrow: every cell stays text, so one garbage score is one rejected
    # row instead of a failed parse, and cells may hold newlines (multi-line rationales).
    reader = csv.DictReader(io.StringIO(storage.read_bytes(uri).decode("utf-8-sig"), newline=""))
    require_columns(
        reader.fieldnames or [],
        ["user_id", "item_id", *[f"proposed_{a}" for a in aspects]],
        uri,
        hint="Export the sheet with sgrec_ray.align.annotate.export_sheet for the same aspects.",
    )
    rejects = Rejects()
    rows, numbers, records = [], [], []
    for k, sheet_row in enumerate(reader):
        merged = _reviewed_row(sheet_row, aspects, default_reviewer)
        if isinstance(merged, tuple):
            rejects.add(uri, k, merged[0], sheet_row, merged[1])
            continue
        rows.append(merged)
        numbers.append(k)
        records.append(sheet_row)
    names = ["user_id", "item_id", *aspects, "rationale", "source", "timestamp"]
    raw = pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in names})
    clean = check_labels(
        raw,
        aspects,
        scale,
        item_ids,
        rejects,
        uri=uri,
        default_source=f"file:{uri}",
        rows=numbers,
        records=records,
    )
    return clean, rejects.table()


def _reviewed_row(
    row: Mapping[str, Any], aspects: Sequence[str], default_reviewer: str | None
) -> dict[str, str | None] | tuple[str, str]:
    """A sheet row → raw label cells (scores still text), or (reason, detail) to reject it."""

    def cell(name: str) -> str:
        value = row.get(name)
        return value.strip() if isinstance(value, str) else ""

    accept_text = cell("accept").lower()
    if accept_text and accept_text not in YES | NO:
        return BAD_ACCEPT_FLAG, f"accept {row.get('accept')!r}: use yes/no (or leave it empty)"
    accepted = accept_text in YES
    corrected = {a: cell(f"reviewed_{a}") for a in aspects if cell(f"reviewed_{a}")}
    if accept_text in NO and not corrected:
        return REJECTED_BY_REVIEWER, "accept is no and no score was corrected"
    reviewer = cell("reviewer") or default_reviewer
    reviewed = accepted or bool(corrected)
    if reviewed and not reviewer:
        return MISSING_REVIEWER, "reviewed row without a reviewer name"
    return {
        "user_id": cell("user_id"),
        "item_id": cell("item_id"),
        **{a: corrected.get(a, cell(f"proposed_{a}")) for a in aspects},
        "rationale": cell("rationale") or None,
        "source": f"human:{reviewer}" if reviewed else cell("source") or None,
        "timestamp": cell("timestamp") or None,
    }
