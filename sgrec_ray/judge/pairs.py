"""Pairwise feedback for Stage B: "for this user, item i is preferred over item j".

Two sources, one output table (``PAIRS``):

- **Ratings** (ML-100k and any log with ratings): an item the user rated ≥ ``positive_min_rating``
  is preferred over one they rated ≤ ``negative_max_rating``. Neutral ratings make no pairs.
- **A user-provided file** (``aggregate.pairs_path``, Parquet or CSV): ``user_id``,
  ``preferred_item_id``, ``other_item_id`` and optionally ``timestamp``. Rows naming unknown users or
  items are counted as rejects, never dropped silently.

Pairs are capped per user (a seeded sample, so reruns give the same pairs) and split by time: a
pair happens when its later event happens, and the latest ``heldout_fraction`` of pairs are held
out. Splitting by time (not at random) is what makes held-out PairAUC a forecast, not a recall.

Each pair carries its own judge context (:func:`pair_histories`): the user's last events strictly
before the pair's *earlier* event, without either item of the pair, capped to the window the
judge's prompt shows. So the judge sees neither pair item as "already watched" (which would leak
the answer into Profile and Novelty) nor anything the user did once the pair began, and a held-out
pair is judged from the history its user had then, not from the (often empty) history before the
global held-out cutoff. A pair whose user had no earlier event gets an empty history; it is kept
and counted (the LLM judge then reads demographics only; the embedding judge fails it
``no_history``).

Everything here is deterministic in (data, config), so the judge stage (which must score both items
of a pair, see :func:`pairs_to_judge`) and the aggregate stage build the very same pairs.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sgrec_ray import storage
from sgrec_ray.config import AggregateSection
from sgrec_ray.data.loaders import read_any_table
from sgrec_ray.data.schema import INTERACTIONS_FILE, ITEMS_FILE
from sgrec_ray.data.validate import parse_id, require_columns
from sgrec_ray.judge.rows import JudgeRequest, prompt_spec, request_contexts
from sgrec_ray.runs import RunContext

PAIRS = pa.schema(
    [
        ("user_id", pa.string()),
        ("preferred", pa.int32()),  # item_idx of the preferred item
        ("other", pa.int32()),  # item_idx of the other item
        ("timestamp", pa.int64()),  # when the pair happened: max of both events (null if unknown)
        # The earlier of both events (a file's pair: its timestamp): the history ends before it.
        ("first_timestamp", pa.int64()),
        ("split", pa.string()),  # train | heldout
        ("history", pa.list_(pa.int32())),  # the judge context: item_idx, oldest first
        ("context", pa.string()),  # its rows.context_hash: the key of its judge score rows
    ]
)
FILE_COLUMNS = ["user_id", "preferred_item_id", "other_item_id"]  # + optional "timestamp"


class NoFeedbackError(ValueError):
    """The data holds no pairwise feedback: no ratings and no ``aggregate.pairs_path``."""


@dataclass
class PairSet:
    """The pairs of a run, split, plus how many candidate rows were rejected and why."""

    table: pa.Table  # PAIRS
    # Events before this time are "the past" for Stage B's user features; None = no time.
    cutoff: int | None
    rejects: dict[str, int] = field(default_factory=dict)
    source: str = "ratings"

    def counts(self) -> dict[str, int]:
        split = self.table.column("split").to_pylist()
        return {"train": split.count("train"), "heldout": split.count("heldout")}

    def empty_history(self) -> dict[str, int]:
        """Pairs per split whose user had no event before the pair (judged with no history)."""
        empty = pc.equal(pc.list_value_length(self.table.column("history")), 0)
        split = self.table.filter(empty).column("split").to_pylist()
        return {"train": split.count("train"), "heldout": split.count("heldout")}


def _user_seed(seed: int, user_id: str) -> list[int]:
    # Python's hash() is salted per process; a digest keeps the per-user sample stable everywhere.
    return [seed, int.from_bytes(hashlib.sha1(user_id.encode()).digest()[:8], "little")]


def rating_pairs(
    interactions: pa.Table,
    positive_min_rating: float,
    negative_max_rating: float,
    max_pairs_per_user: int | None,
    seed: int = 0,
) -> pa.Table:
    """All (liked, disliked) pairs per user, capped by a seeded per-user sample; no split column.

    ``interactions``: user_id, item_idx, timestamp, rating (rows with null rating are ignored).
    Returns columns user_id, preferred, other, timestamp (the later event), first_timestamp (the
    earlier), per user in the seeded sample's order.
    """
    if positive_min_rating <= negative_max_rating:
        raise ValueError(
            f"aggregate.positive_min_rating ({positive_min_rating}) must be above "
            f"aggregate.negative_max_rating ({negative_max_rating}), or an item could beat itself"
        )
    df = interactions.select(["user_id", "item_idx", "timestamp", "rating"]).to_pandas()
    df = df[df["rating"].notna()]
    # Sorting first makes the sample independent of the order rows arrive in.
    df = df.sort_values(["user_id", "timestamp", "item_idx"], kind="stable")
    out: dict[str, list] = {
        "user_id": [],
        "preferred": [],
        "other": [],
        "timestamp": [],
        "first_timestamp": [],
    }
    for user_id, events in df.groupby("user_id", sort=True):
        pos = events[events["rating"] >= positive_min_rating]
        neg = events[events["rating"] <= negative_max_rating]
        n = len(pos) * len(neg)
        if n == 0:
            continue
        k = n if max_pairs_per_user is None else min(n, max_pairs_per_user)
        rng = np.random.default_rng(_user_seed(seed, str(user_id)))
        flat = np.sort(rng.choice(n, size=k, replace=False)) if k < n else np.arange(n)
        i, j = np.divmod(flat, len(neg))
        out["user_id"] += [str(user_id)] * k
        out["preferred"] += pos["item_idx"].to_numpy()[i].tolist()
        out["other"] += neg["item_idx"].to_numpy()[j].tolist()
        t_pos, t_neg = pos["timestamp"].to_numpy()[i], neg["timestamp"].to_numpy()[j]
        out["timestamp"] += np.maximum(t_pos, t_neg).tolist()
        out["first_timestamp"] += np.minimum(t_pos, t_neg).tolist()
    return _raw_pairs(out)


def _raw_pairs(out: dict[str, list]) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array(out["user_id"], pa.string()),
            "preferred": pa.array(out["preferred"], pa.int32()),
            "other": pa.array(out["other"], pa.int32()),
            "timestamp": pa.array(out["timestamp"], pa.int64()),
            "first_timestamp": pa.array(out["first_timestamp"], pa.int64()),
        }
    )


def split_by_time(
    timestamps: pa.ChunkedArray | pa.Array, heldout_fraction: float, what: str, key: str
) -> tuple[np.ndarray, int | None]:
    """(held-out mask, cutoff): the latest ``heldout_fraction`` of rows by timestamp are held out.

    Held-out ⇔ timestamp ≥ cutoff; ties at the cutoff all go to held-out so one moment is never
    split across both sides, and held-out accuracy is a forecast. Without timestamps (all null)
    row order stands for time and the cutoff is None. ``what``/``key`` name the rows and the config
    key in errors (Stage B pairs, alignment labels).
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"{key} must be in [0, 1), got {heldout_fraction}")
    n = len(timestamps)
    n_held = math.ceil(heldout_fraction * n) if n else 0
    if timestamps.null_count == n:  # no time: the last rows are the latest
        return np.arange(n) >= n - n_held, None
    if timestamps.null_count:
        raise ValueError(
            f"{what} timestamps must be all present or all absent: {timestamps.null_count} of {n} "
            "are missing, so the held-out split would mix time and file order"
        )
    times = timestamps.to_numpy()
    cutoff = int(np.sort(times)[n - n_held]) if n_held else int(times.max()) + 1
    return times >= cutoff, cutoff


def split_column(held: np.ndarray) -> pa.Array:
    return pa.array(np.where(held, "heldout", "train").tolist(), pa.string())


def time_split(pairs: pa.Table, heldout_fraction: float) -> tuple[pa.Table, int | None]:
    """Add ``split`` to pairs by :func:`split_by_time`. Returns (pairs + split, cutoff)."""
    held, cutoff = split_by_time(
        pairs.column("timestamp"), heldout_fraction, "pair", "aggregate.heldout_fraction"
    )
    return pairs.append_column("split", split_column(held)), cutoff


def read_pairs_file(
    uri: str, item_ids: dict[str, int], known_users: set[str]
) -> tuple[pa.Table, dict[str, int]]:
    """A user-provided pairwise file → (user_id, preferred, other, timestamp, first_timestamp) +
    reject counts; a file pair is one moment, so both times are its ``timestamp``.

    Missing required columns raise at once (naming them); rows with an unknown user or item, or
    the same item on both sides, are counted by reason.
    """
    table = read_any_table(uri, string_columns=FILE_COLUMNS)
    require_columns(
        table.column_names,
        FILE_COLUMNS,
        uri,
        hint="A pairwise file needs user_id, preferred_item_id, other_item_id (+ optional timestamp).",
    )
    has_time = "timestamp" in table.column_names
    rejects = {"unknown_user": 0, "unknown_item": 0, "same_item": 0, "bad_timestamp": 0}
    out: dict[str, list] = {k: [] for k in ("user_id", "preferred", "other", "timestamp")}
    cols = [table.column(c).to_pylist() for c in FILE_COLUMNS]
    times = table.column("timestamp").to_pylist() if has_time else [None] * table.num_rows
    for raw_user, raw_pref, raw_other, raw_t in zip(*cols, times, strict=True):
        user, pref, other = parse_id(raw_user), parse_id(raw_pref), parse_id(raw_other)
        if user not in known_users:
            rejects["unknown_user"] += 1
        elif pref not in item_ids or other not in item_ids:
            rejects["unknown_item"] += 1
        elif pref == other:
            rejects["same_item"] += 1
        elif has_time and (raw_t is None or not _is_number(raw_t)):
            rejects["bad_timestamp"] += 1
        else:
            out["user_id"].append(user)
            out["preferred"].append(item_ids[pref])
            out["other"].append(item_ids[other])
            out["timestamp"].append(int(float(raw_t)) if has_time else None)
    out["first_timestamp"] = out["timestamp"]
    return _raw_pairs(out), {k: v for k, v in rejects.items() if v}


def _is_number(value: object) -> bool:
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def cap_per_user(pairs: pa.Table, max_pairs_per_user: int | None, seed: int) -> pa.Table:
    """Keep at most ``max_pairs_per_user`` rows per user (seeded sample, original order kept)."""
    if max_pairs_per_user is None:
        return pairs
    users = pairs.column("user_id").to_pylist()
    keep: list[int] = []
    for user, rows in pd.Series(range(len(users))).groupby(users, sort=True):
        idx = rows.to_numpy()
        if len(idx) > max_pairs_per_user:
            rng = np.random.default_rng(_user_seed(seed, str(user)))
            idx = np.sort(rng.choice(idx, size=max_pairs_per_user, replace=False))
        keep += idx.tolist()
    return pairs.take(pa.array(sorted(keep), pa.int64()))


def build_pairs(ctx: RunContext) -> PairSet:
    """The run's pairs (ratings or ``aggregate.pairs_path``), capped and split by time."""
    cfg: AggregateSection = ctx.cfg.aggregate
    seed = ctx.cfg.run.seed
    interactions = storage.read_table(ctx.path("data", INTERACTIONS_FILE))
    if cfg.pairs_path:
        items = storage.read_table(ctx.path("data", ITEMS_FILE), columns=["item_idx", "item_id"])
        item_ids = dict(
            zip(
                items.column("item_id").to_pylist(),
                items.column("item_idx").to_pylist(),
                strict=True,
            )
        )
        users = set(interactions.column("user_id").to_pylist())
        raw, rejects = read_pairs_file(storage.normalize(cfg.pairs_path), item_ids, users)
        raw = cap_per_user(raw, cfg.max_pairs_per_user, seed)
        source = "file"
    else:
        if interactions.column("rating").null_count == interactions.num_rows:
            raise NoFeedbackError(
                f"{ctx.path('data', INTERACTIONS_FILE)} has no ratings, so no pairwise feedback can "
                f"be derived; set aggregate.pairs_path to a pairwise file "
                f"({', '.join(FILE_COLUMNS)}, optional timestamp)"
            )
        raw = rating_pairs(
            interactions,
            cfg.positive_min_rating,
            cfg.negative_max_rating,
            cfg.max_pairs_per_user,
            seed,
        )
        rejects, source = {}, "ratings"
    table, cutoff = time_split(raw, cfg.heldout_fraction)
    spec = prompt_spec(ctx.cfg.judge)
    histories = pair_histories(interactions, table, spec.long_history + spec.recent_history)
    users = table.column("user_id").to_pylist()
    # A pair row of the judge has no request time (candidates.parquet: null timestamp).
    requests = [JudgeRequest(u, h, -1) for u, h in zip(users, histories, strict=True)]
    table = table.append_column("history", pa.array(histories, pa.list_(pa.int32())))
    table = table.append_column("context", pa.array(request_contexts(requests, spec), pa.string()))
    return PairSet(table=table.cast(PAIRS), cutoff=cutoff, rejects=rejects, source=source)


def pair_histories(interactions: pa.Table, pairs: pa.Table, window: int) -> list[list[int]]:
    """The judge context of each pair: the user's last ``window`` items (oldest first) among the
    events strictly before the pair's ``first_timestamp``, leaving out both items of the pair.

    Before the *earlier* event, not the pair's time: what the user did between rating the two
    items (a sequel of the first, say) would tell the judge about the pair. Strictly before, so a
    same-second event (common in rating logs) never counts as the past. Without a time (a
    pairs file with no timestamps) every event of the user counts, pair items still left out.
    ``interactions``: user_id, item_idx, timestamp; ties keep file order (as the data stage does).
    """
    df = interactions.select(["user_id", "item_idx", "timestamp"]).to_pandas()
    df = df.sort_values(["user_id", "timestamp"], kind="stable")
    events: dict[str, tuple[np.ndarray, np.ndarray]] = {
        str(u): (g["timestamp"].to_numpy(), g["item_idx"].to_numpy())
        for u, g in df.groupby("user_id", sort=False)
    }
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    out: list[list[int]] = []
    for user, pref, other, first in zip(
        *(
            pairs.column(c).to_pylist()
            for c in ("user_id", "preferred", "other", "first_timestamp")
        ),
        strict=True,
    ):
        times, items = events.get(str(user), empty)
        end = len(items) if first is None else int(np.searchsorted(times, first, side="left"))
        history: list[int] = []
        for item in items[:end][::-1]:  # newest first until the window is full
            if len(history) == window:
                break
            if item != pref and item != other:
                history.append(int(item))
        out.append(history[::-1])
    return out


def pairs_to_judge(
    ctx: RunContext, users: Iterable[str] | None = None, pairset: PairSet | None = None
) -> pa.Table:
    """Rows the judge stage must score so that pairs can train Stage B.

    Returns (user_id, item_idx, history): both items of every pair of ``users`` (None = all pair
    users) in that pair's context (:func:`pair_histories`), one row per distinct (user, context,
    item), sorted so a user's rows sharing a context are adjacent. The judge stage adds them as
    candidates with origin ``"pair"``. ``pairset``: the run's pairs when the caller has built them.
    """
    pairset = pairset or build_pairs(ctx)
    table = pairset.table
    if users is not None:
        wanted = pa.array(sorted(set(users)), pa.string())
        table = table.filter(pc.is_in(table.column("user_id"), value_set=wanted))
    rows: dict[tuple[str, str, int], list[int]] = {}
    for user, context, history, pref, other in zip(
        *(table.column(c).to_pylist() for c in ("user_id", "context", "history")),
        table.column("preferred").to_pylist(),
        table.column("other").to_pylist(),
        strict=True,
    ):
        rows[(user, context, pref)] = history
        rows[(user, context, other)] = history
    keys = sorted(rows)
    return pa.table(
        {
            "user_id": pa.array([u for u, _, _ in keys], pa.string()),
            "item_idx": pa.array([i for _, _, i in keys], pa.int32()),
            "history": pa.array([rows[k] for k in keys], pa.list_(pa.int32())),
        }
    )


def attach_scores(
    pairs: pa.Table, scores: pa.Table, aspects: list[str]
) -> tuple[pa.Table, np.ndarray, np.ndarray, dict[str, int]]:
    """Join both sides of each pair with their aspect scores in that pair's context.

    Returns (pairs + a ``scores`` column, aspects of preferred [K, A], of other [K, A], skipped
    counts), where the arrays hold the K pairs with ``scores == "ok"`` in table order. A pair is
    usable only when both items have an ``ok`` score row for (user, the pair's ``context``); the
    others are marked ``user_not_judged`` (the judge stage did not cover the user:
    judge.max_users / split), ``not_judged`` (an item has no row in that context),
    ``no_history`` (only failed rows, and the pair has an empty history: the embedding judge has
    nothing to compare with) or ``judge_failed`` (only failed/NaN rows) and counted. Several ok
    rows for one key (e.g. from a user-provided scores table) are averaged.
    """
    ok = scores.filter(pc.equal(scores.column("status"), "ok"))
    ok_df = ok.select(["user_id", "context", "item_idx", *aspects]).to_pandas()
    # A NaN/inf aspect on an "ok" row is not usable either (it would poison the loss).
    ok_df[aspects] = ok_df[aspects].replace([np.inf, -np.inf], np.nan)
    ok_df = ok_df.dropna(subset=aspects)
    table = ok_df.groupby(["user_id", "context", "item_idx"], sort=False)[aspects].mean()
    lookup = dict(zip(table.index, table.to_numpy(np.float32), strict=True))
    judged = set(
        zip(
            *(scores.column(c).to_pylist() for c in ("user_id", "context", "item_idx")), strict=True
        )
    )
    judged_users = {u for u, _, _ in judged}
    status: list[str] = []
    a_pref, a_other = [], []
    for u, c, h, i, j in zip(
        *(pairs.column(k).to_pylist() for k in ("user_id", "context", "history")),
        pairs.column("preferred").to_pylist(),
        pairs.column("other").to_pylist(),
        strict=True,
    ):
        si, sj = lookup.get((u, c, i)), lookup.get((u, c, j))
        if si is not None and sj is not None:
            status.append("ok")
            a_pref.append(si)
            a_other.append(sj)
        elif (u, c, i) in judged and (u, c, j) in judged:
            status.append("judge_failed" if h else "no_history")
        elif u not in judged_users:
            status.append("user_not_judged")
        else:
            status.append("not_judged")
    n_a = len(aspects)
    reasons = ("user_not_judged", "not_judged", "no_history", "judge_failed")
    skipped = {k: status.count(k) for k in reasons}
    return (
        pairs.append_column("scores", pa.array(status, pa.string())),
        np.asarray(a_pref, np.float32).reshape(-1, n_a),
        np.asarray(a_other, np.float32).reshape(-1, n_a),
        skipped,
    )
