"""Judge quality: PairAUC and point accuracy on held-out feedback, score plots, the report section.

Definitions (also printed in the report, so a reader never has to guess):

- **PairAUC** of a scorer s: over held-out pairs (user x, preferred i, other j), the share with
  s(x,i) > s(x,j), ties counting ½. 0.5 = chance; computed for each single aspect, for uniform
  weights and for the learned w(x).
- **PointAcc**: over judged (user, item) rows whose item the user rated, excluding items of training
  pairs: label "liked" if rating ≥ ``positive_min_rating``, "disliked" if ≤ ``negative_max_rating``
  (neutral ratings left out); predicted "liked" iff the holistic score is above the middle of the
  judge's scale. A weak proxy: ratings are not the paper's human point labels, and the threshold is
  not tuned; the majority-class rate and balanced accuracy are given beside it for that reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sgrec_ray import storage
from sgrec_ray.data.schema import ITEMS_FILE
from sgrec_ray.plots import pyplot, save_png
from sgrec_ray.runs import RunContext

log = logging.getLogger(__name__)

PLOT_FILE = "judge_scores.png"
N_EXAMPLES = 3
EVIDENCE_CHARS = 240


# --------------------------------------------------------------------------------------------
# Pure metrics


def pair_auc(s_pref: np.ndarray, s_other: np.ndarray) -> float:
    """Share of pairs with s_pref > s_other, ties ½; NaN when there are no pairs. Inputs [P]."""
    a = np.asarray(s_pref, np.float64)
    b = np.asarray(s_other, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"pair_auc: shapes differ {a.shape} vs {b.shape}")
    if a.size == 0:
        return float("nan")
    return float(np.mean(_pair_credit(a, b)))


def pair_auc_se(s_pref: np.ndarray, s_other: np.ndarray) -> float:
    """Standard error of :func:`pair_auc` over pairs (std / sqrt(n), ddof 1); NaN under 2 pairs.

    Pairs of one user are not independent, so read it as a lower bound on the noise."""
    a = np.asarray(s_pref, np.float64)
    b = np.asarray(s_other, np.float64)
    if a.size < 2:
        return float("nan")
    return float(_pair_credit(a, b).std(ddof=1) / np.sqrt(a.size))


def _pair_credit(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a > b) + 0.5 * (a == b)


def point_accuracy(
    holistic: np.ndarray,
    ratings: np.ndarray,
    positive_min_rating: float,
    negative_max_rating: float,
    scale: int,
) -> dict[str, Any]:
    """PointAcc as defined in the module docstring, with its base rates. Inputs [N]."""
    s = np.asarray(holistic, np.float64)
    r = np.asarray(ratings, np.float64)
    liked, disliked = r >= positive_min_rating, r <= negative_max_rating
    labelled = liked | disliked
    threshold = (1 + scale) / 2
    pred = s[labelled] > threshold
    truth = liked[labelled]
    n = int(labelled.sum())
    out: dict[str, Any] = {
        "n": n,
        "liked": int(liked.sum()),
        "disliked": int(disliked.sum()),
        "threshold": threshold,
        "point_acc": None,
        "balanced_acc": None,
        "majority_baseline": None,
    }
    if n:
        out["point_acc"] = float(np.mean(pred == truth))
        out["majority_baseline"] = float(max(truth.mean(), 1 - truth.mean()))
        rates = [np.mean(pred[truth == c] == c) for c in (True, False) if (truth == c).any()]
        out["balanced_acc"] = float(np.mean(rates))
    return out


def _nan_to_none(x: float) -> float | None:
    return None if x != x else round(x, 4)


def evaluate_pairs(
    aggregator: Any, features: np.ndarray, a_pref: np.ndarray, a_other: np.ndarray
) -> dict[str, Any]:
    """PairAUC of every single aspect, of uniform weights and of the learned w(x).

    features [P, F] (the user of each pair), a_pref / a_other [P, A]. Values are None without pairs.
    """
    aspects = aggregator.aspects
    weights = aggregator.weights(features) if len(features) else np.zeros((0, len(aspects)))
    sides = {a: (a_pref[:, k], a_other[:, k]) for k, a in enumerate(aspects)}
    sides["uniform"] = (a_pref.mean(1), a_other.mean(1))
    sides["learned"] = ((weights * a_pref).sum(1), (weights * a_other).sum(1))
    auc = {name: _nan_to_none(pair_auc(*s)) for name, s in sides.items()}
    mean_w = weights.mean(0) if len(weights) else np.full(len(aspects), np.nan)
    return {
        "pair_auc": auc,
        "pair_auc_se": {name: _nan_to_none(pair_auc_se(*s)) for name, s in sides.items()},
        "weights_mean": {a: _nan_to_none(float(w)) for a, w in zip(aspects, mean_w, strict=True)},
        "n": len(a_pref),
    }


# --------------------------------------------------------------------------------------------
# Run-level helpers (used by the aggregate stage)


def _ok_scores(scores: pa.Table, aspects: Sequence[str]) -> pa.Table:
    ok = scores.filter(pc.equal(scores.column("status"), "ok"))
    for a in aspects:
        ok = ok.filter(pc.is_finite(ok.column(a)))
    return ok


def point_accuracy_for_run(
    scores: pa.Table,
    interactions: pa.Table,
    aggregator: Any,
    user_features: dict[str, np.ndarray],
    train_pairs: pa.Table,
    ctx: RunContext,
) -> dict[str, Any]:
    """PointAcc over judged rows the user rated, items of training pairs excluded."""
    aspects = aggregator.aspects
    ok = _ok_scores(scores, aspects).to_pandas()
    rated = interactions.select(["user_id", "item_idx", "rating"]).to_pandas().dropna()
    rated = rated.drop_duplicates(["user_id", "item_idx"], keep="last")
    rows = ok.merge(rated, on=["user_id", "item_idx"], how="inner")
    train_users = train_pairs.column("user_id").to_pylist()
    seen = set(zip(train_users, train_pairs.column("preferred").to_pylist(), strict=True))
    seen |= set(zip(train_users, train_pairs.column("other").to_pylist(), strict=True))
    mask = [(u, i) not in seen for u, i in zip(rows["user_id"], rows["item_idx"], strict=True)]
    rows = rows[np.asarray(mask, bool)] if len(rows) else rows
    # One row per (user, item): an item judged under several origins counts once.
    rows = rows.groupby(["user_id", "item_idx"], as_index=False)[[*aspects, "rating"]].mean()
    if len(rows):
        feats = np.stack([user_features[u] for u in rows["user_id"]])
        s = aggregator.holistic(feats, rows[aspects].to_numpy(np.float32))
    else:
        s = np.zeros(0)
    cfg = ctx.cfg.aggregate
    return point_accuracy(
        s,
        rows["rating"].to_numpy(),
        cfg.positive_min_rating,
        cfg.negative_max_rating,
        ctx.cfg.judge.scale,
    )


def _side(
    scores_df: Any,
    titles: dict[int, str],
    pair: dict[str, Any],
    side: str,
    aspects: list[str],
    w: np.ndarray,
) -> dict[str, Any]:
    """One item of a pair as judged in that pair's context."""
    item = pair[side]
    mine = (scores_df["user_id"] == pair["user_id"]) & (scores_df["context"] == pair["context"])
    row = scores_df[mine & (scores_df["item_idx"] == item)].iloc[0]
    values = {a: round(float(row[a]), 3) for a in aspects}
    out: dict[str, Any] = {
        "item_idx": int(item),
        "title": titles.get(int(item)),
        "aspects": values,
        "holistic": round(float(np.dot(w, [values[a] for a in aspects])), 3),
    }
    evidence = _evidence(row.get("evidence") if "evidence" in row else None)
    if evidence:
        out["evidence"] = evidence
    return out


def _evidence(raw: Any) -> dict[str, str] | None:
    """Stage A stores evidence as JSON {aspect: sentence}; anything else is kept as free text."""
    if raw is None or raw != raw or not str(raw).strip():
        return None
    try:
        parsed = json.loads(raw)
    except (TypeError, ValueError):
        parsed = None
    if not isinstance(parsed, dict):
        parsed = {"text": str(raw)}
    return {str(k): str(v)[:EVIDENCE_CHARS] for k, v in parsed.items() if v}


def example_rows(
    ctx: RunContext,
    heldout_pairs: pa.Table,
    scores: pa.Table,
    aggregator: Any,
    user_features: dict[str, np.ndarray],
    n: int = N_EXAMPLES,
) -> list[dict[str, Any]]:
    """A few held-out pairs with titles, aspect scores, w(x), holistic scores and evidence."""
    if heldout_pairs.num_rows == 0:
        return []

    items = storage.read_table(ctx.path("data", ITEMS_FILE), columns=["item_idx", "title"])
    titles = dict(
        zip(items.column("item_idx").to_pylist(), items.column("title").to_pylist(), strict=True)
    )
    aspects = aggregator.aspects
    ok = _ok_scores(scores, aspects).to_pandas()
    picked = heldout_pairs.sort_by([("user_id", "ascending"), ("preferred", "ascending")])
    first_per_user: dict[str, dict[str, Any]] = {}
    for row in picked.to_pylist():  # one pair from each of the first n users: more variety
        first_per_user.setdefault(row["user_id"], row)
        if len(first_per_user) == n:
            break
    out = []
    for row in first_per_user.values():
        w = aggregator.weights(user_features[row["user_id"]][None])[0]
        out.append(
            {
                "user_id": row["user_id"],
                "weights": {a: round(float(x), 3) for a, x in zip(aspects, w, strict=True)},
                "history_items": len(row["history"]),
                "preferred": _side(ok, titles, row, "preferred", aspects, w),
                "other": _side(ok, titles, row, "other", aspects, w),
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# Report hooks (called by sgrec_ray.report)


def _read_scores(ctx: RunContext) -> pa.Table | None:
    if not storage.exists(ctx.path("judge", "scores")):
        return None
    from sgrec_ray.judge.stage import load_scores

    return load_scores(ctx)


def score_counts(scores: pa.Table) -> dict[str, Any]:
    """Rows judged, ok / failed, and rows per candidate origin."""
    status = scores.column("status").to_pylist()
    origins: dict[str, int] = {}
    if "origin" in scores.column_names:
        for o in scores.column("origin").to_pylist():
            origins[str(o)] = origins.get(str(o), 0) + 1
    return {
        "rows": scores.num_rows,
        "ok": status.count("ok"),
        "failed": scores.num_rows - status.count("ok"),
        "by_origin": dict(sorted(origins.items())),
    }


def report_section(ctx: RunContext) -> dict[str, Any] | None:
    """The ``judge`` section of report.json; None when neither judge nor aggregate has finished."""
    judge, agg = ctx.manifest("judge"), ctx.manifest("aggregate")
    if judge is None and agg is None:
        return None
    section: dict[str, Any] = {}
    scores = _read_scores(ctx) if judge is not None else None
    if scores is not None:
        section["counts"] = score_counts(scores)
    if judge is not None:
        section["stage_a"] = judge.get("metrics", {})  # Stage A's own figures (throughput, …)
    if agg is not None:
        m = agg.get("metrics", {})
        keys = ("aspects", "pair_auc", "pair_auc_se", "point_acc", "point", "pairs", "weights_mean")
        for key in keys:
            if key in m:
                section[key] = m[key]
        section["aggregator"] = m.get("train", {})
        section["examples"] = m.get("examples", [])
    return section


def write_plots(ctx: RunContext) -> dict[str, str]:
    """Histogram of each aspect's scores (ok rows) as ``judge_scores.png`` at the run root.

    Returns {title: file name relative to the run root}; empty without judge scores.
    """
    scores = _read_scores(ctx) if ctx.manifest("judge") is not None else None
    if scores is None:
        return {}
    aspects = [a for a in ctx.cfg.judge.aspects if a in scores.column_names]
    if not aspects:
        return {}
    ok = _ok_scores(scores, aspects)
    plt = pyplot()

    scale = ctx.cfg.judge.scale
    fig, axes = plt.subplots(1, len(aspects), figsize=(3.2 * len(aspects), 2.8), squeeze=False)
    for ax, aspect in zip(axes[0], aspects, strict=True):
        values = ok.column(aspect).to_numpy(zero_copy_only=False)
        # Bins over the observed range: a small judge's expected scores often sit in a narrow band
        # (e.g. 2.9-3.2) that fixed bins over 1..scale would lump into one bar.
        ax.hist(values, bins=30 if len(values) else 1, color="#4C72B0")
        ax.set_title(f"{aspect} (n={len(values)})")
        ax.set_xlabel(f"expected score 1..{scale}")
    axes[0][0].set_ylabel("judged rows")
    fig.tight_layout()
    save_png(fig, storage.join(ctx.run_uri, PLOT_FILE), dpi=110)
    return {"Judge aspect score distributions": PLOT_FILE}


def _empty_history(pairs: dict[str, Any]) -> str:
    """' (n of N training and m of M held-out pairs had no earlier event …)', or '' (older runs)."""
    empty = pairs.get("empty_history")
    if not empty:
        return ""
    before = pairs.get("before_scores", {})
    return (
        f" ({empty.get('train')} of {before.get('train')} training and {empty.get('heldout')} of "
        f"{before.get('heldout')} held-out pairs had no earlier event: an empty history)"
    )


def _fmt(x: Any) -> str:
    return "–" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def render_markdown(section: dict[str, Any], plots: dict[str, str]) -> str:
    """The report.md part for the judge: counts, quality table, definitions, examples, plots."""
    out = ["## Personalized Semantic Judge", ""]
    stage_a = section.get("stage_a") or {}
    if "pairs_per_s" in stage_a:
        out += [
            f"Stage A: model `{stage_a.get('model')}` ({stage_a.get('engine')}, "
            f"{stage_a.get('scoring')} scoring), {stage_a['pairs_per_s']} pairs/s, "
            f"{stage_a.get('prompt_tokens_per_s')} prompt tokens/s.",
            "",
        ]
    counts = section.get("counts")
    if counts:
        out += [
            f"Stage A judged {counts['rows']} (user, candidate) rows: {counts['ok']} ok, "
            f"{counts['failed']} failed. By origin: "
            + ", ".join(f"{k} {v}" for k, v in counts["by_origin"].items()),
            "",
        ]
    auc = section.get("pair_auc")
    if auc:
        pairs = section.get("pairs", {})
        out += [
            f"Held-out pairwise feedback ({pairs.get('source', '?')}): {pairs.get('train')} "
            f"training pairs, {pairs.get('heldout')} held-out pairs (latest by time), "
            f"{pairs.get('skipped')} skipped for lack of ok judge scores "
            f"({pairs.get('skipped_by_reason', {})}). Each pair is judged in its own context: "
            "the user's history before the pair's earlier event, without the pair's items"
            f"{_empty_history(pairs)}. PairAUC = share of held-out pairs the "
            "scorer orders correctly (ties ½; 0.5 = chance; the paper's Qwen3-4B judge: 0.81).",
            "",
            "| scorer | PairAUC | s.e. |",
            "|---|---|---|",
        ]
        order = [*section.get("aspects", []), "uniform", "learned"]
        order += [k for k in auc if k not in order]
        se = section.get("pair_auc_se") or {}
        out += [
            f"| {name} | {_fmt(auc.get(name))} | {_fmt(se.get(name))} |"
            for name in order
            if name in auc
        ]
        out.append("")
    point = section.get("point")
    if point:
        out += [
            f"PointAcc {_fmt(point.get('point_acc'))} on {point['n']} rated judged rows "
            f"(liked = rating ≥ positive_min_rating, disliked = rating ≤ negative_max_rating; "
            f"predicted liked iff holistic score > {point['threshold']}); majority-class rate "
            f"{_fmt(point.get('majority_baseline'))}, balanced accuracy "
            f"{_fmt(point.get('balanced_acc'))}. A weak proxy: ratings are not human point labels.",
            "",
        ]
    weights = section.get("weights_mean")
    if weights:
        out += [
            "Mean learned weights over held-out users: "
            + ", ".join(f"{a} {_fmt(w)}" for a, w in weights.items()),
            "",
        ]
    for ex in section.get("examples", []):
        shown = f", {ex['history_items']} history items" if "history_items" in ex else ""
        out.append(f"- user {ex['user_id']}{shown}, w(x) {ex['weights']}:")
        for side in ("preferred", "other"):
            item = ex[side]
            line = f"  - {side}: *{item.get('title')}* {item['aspects']} → {item['holistic']}"
            for aspect, sentence in (item.get("evidence") or {}).items():
                line += f"; {aspect}: “{sentence}”"
            out.append(line)
    if section.get("examples"):
        out.append("")
    for title, name in plots.items():
        out += [f"![{title}]({name})", ""]
    return "\n".join(out)
