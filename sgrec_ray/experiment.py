"""``sgrec experiment CONFIG``: SFT vs every registered advantage (GRPO, Reward-Sum, Adv-Sum,
A2PO), over ``experiment.seeds``.

It sits beside ``pipeline`` and ``report``, not in ``rl/``: it runs pipeline stages and writes the
report, and both of those import ``rl``.

Recipe: run (or reuse) the shared stages of the base run once — data, sasrec, sid, sft, eval, ranker,
judge, aggregate — then train each RL arm x seed with :func:`sgrec_ray.rl.a2po.train_policy` into
``<run>/experiment/<arm>-seed<k>/`` (its own Ray Train run name; a finished arm is skipped on rerun
because it wrote ``result.json``), score every model the same way, and write
``<run>/experiment/manifest.json`` (the report's source), plots, and a written reading.

Measures per model, on the eval split (first configured eval setting):
HR@{5,10}, NDCG@{5,10}; ``judge@10``: mean PSJ holistic score of the top-10 for the first
``experiment.judge_eval_users`` users (the judge that trained the semantic arms — biased towards them);
``genre@10``: share of top-10 items sharing a genre with the user's held-out target when the user
liked it (rating >= ranker.positive_min_rating) — independent of the judge; ``pctr@10``: the business
ranker's mean pCTR of the top-10 (what the business reward optimises).
Then the semantic-rate study: A2PO at each ``experiment.study_rates`` for the first seed. Every arm
is paired with SFT over the same users (HR/NDCG at 1, 5, 10), and ``best_vs_sft`` names the arm
validation ranks best with its paired test difference from SFT.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np

from sgrec_ray import pipeline, storage
from sgrec_ray.config import Config
from sgrec_ray.data import schema
from sgrec_ray.data.items import genre_matrix
from sgrec_ray.eval.stage import generate_topk, load_eval_samples
from sgrec_ray.judge.checks import require_in_process
from sgrec_ray.judge.reward_service import start_reward_service
from sgrec_ray.metrics import paired_difference, ranking_metrics, target_ranks
from sgrec_ray.plots import pyplot, save_png
from sgrec_ray.ray_utils import ensure_ray
from sgrec_ray.report import write_report
from sgrec_ray.rl.a2po import (
    TELEMETRY_FILE,
    load_valid,
    require_room_for_service,
    run_prompts,
    train_policy,
)
from sgrec_ray.rl.advantages import ADVANTAGES
from sgrec_ray.rl.experiment_report import KEYS, STAGE, fmt_mean_std
from sgrec_ray.rl.ranker import item_values, load_ranker
from sgrec_ray.rl.rewards import reward_models, uses_judge
from sgrec_ray.rl.telemetry import plot_curves, read_jsonl
from sgrec_ray.runs import RunContext, StageResult, resolve_adapter, write_manifest

log = logging.getLogger(__name__)

ARMS = tuple(ADVANTAGES)  # every registered advantage is an arm; GRPO first (the baseline)
PAIRED_KS = (1, 5, 10)  # RL often trades the tail of the list for its head: pair at every depth
RESULT_FILE = "result.json"


def run_experiment(cfg: Config, *, semantic: Any | None = None, force: bool = False) -> dict:
    """Run the comparison and the semantic-rate study; return the experiment manifest's metrics.

    Args:
        semantic: a reward client (``score``/``stats``); None = start the PSJ reward service of
            the base run (running judge + aggregate first when they have not finished).
        force: retrain arms that already finished.
    """
    started = time.time()
    ensure_ray(cfg)
    cfg = resolve_adapter(cfg)  # judge.adapter: align → this run's aligned judge
    ex = cfg.experiment
    if ex.judge_engine is not None:
        cfg = dataclasses.replace(cfg, judge=dataclasses.replace(cfg.judge, engine=ex.judge_engine))
    rate = cfg.rl.semantic_rate if ex.semantic_rate is None else ex.semantic_rate
    ctx = RunContext(cfg)
    judge_needed = any(
        uses_judge(dataclasses.replace(cfg.rl, advantage=a, semantic_rate=r))
        for a in ARMS
        for r in [rate, *ex.study_rates]
    )
    if semantic is None and judge_needed:  # fail in seconds, not after the shared stages ran
        require_in_process(cfg.judge, "the semantic reward service (sgrec experiment)")
    shared = ["data", "sasrec", "sid", "sft", "eval"]
    models = reward_models(cfg.rl.business_reward, cfg.rl.composite_weights)
    shared += ["ranker"] if "ranker" in models else []
    shared += ["judge", "aggregate"] if semantic is None and judge_needed else []
    for name in shared:
        pipeline.run_stage(ctx, name)
    if semantic is None and judge_needed:
        require_room_for_service(cfg)
        semantic = start_reward_service(cfg)
    scorer = _Scorer(ctx, semantic)
    prompts = run_prompts(ctx)
    sft_uri = ctx.require("sft")["outputs"]["model"]
    runs: dict[str, list[dict[str, Any]]] = {"sft": [scorer.score("sft", sft_uri)]}
    telemetry: dict[str, list[dict[str, Any]]] = {}
    for arm in ARMS:
        for seed in ex.seeds:
            result = _arm(ctx, scorer, prompts, arm, seed, rate, semantic, force)
            runs.setdefault(arm, []).append(result)
            if seed == ex.seeds[0]:
                telemetry[arm] = _telemetry(result["uri"])
    study = []
    for study_rate in ex.study_rates:
        result = _arm(ctx, scorer, prompts, "a2po", ex.seeds[0], study_rate, semantic, force)
        study.append(_study_row(study_rate, result))
    study_rates = [rate, *ex.study_rates]
    main_row = _study_row(rate, runs["a2po"][0]) if rate not in ex.study_rates else None
    if main_row is not None:  # the main arms' rate is a point of the study too
        study = sorted([*study, main_row], key=lambda r: r["semantic_rate"])
    full = next((r for r in study if r["semantic_rate"] == max(study_rates)), None)
    for row in study:
        row["hr@10_vs_full"] = _safe_div(row["hr@10"], full["hr@10"]) if full else None
        row["judge_pairs_vs_full"] = (
            _safe_div(row["judge_pairs"], full["judge_pairs"]) if full else None
        )
    methods = {name: mean_std(rows) for name, rows in runs.items()}
    for name, rows in runs.items():
        if name != "sft":
            methods[name]["vs_sft"] = paired_vs(rows, runs["sft"])
            methods[name]["best_steps"] = [_valid(r).get("best_step") for r in rows]
            methods[name]["valid_ndcg@10"] = _mean([_valid(r).get("best") for r in rows])
    if "a2po" in runs and "grpo" in runs:
        methods["a2po"]["vs_grpo"] = paired_vs(runs["a2po"], runs["grpo"])
    plots = _plots(ctx, methods, study, telemetry)
    metrics = {
        "setting": scorer.setting,
        "users": scorer.n_users,
        "judge_eval_users": scorer.judge_users,
        "seeds": list(ex.seeds),
        "semantic_rate": rate,
        "judge_engine": cfg.judge.engine,
        "methods": methods,
        "best_vs_sft": best_vs_sft(methods),
        "semantic_rate_study": study,
        "constant_biz_share": {a: _mean_key(t, "constant_biz_share") for a, t in telemetry.items()},
        "rule_constant_biz_share": _rule_constant_share(telemetry),
        "constant_share_by_reward": constant_share_by_reward(telemetry),
        "reading": reading(methods, study, cfg),
        "plots": plots,
        "judge_service": semantic.stats() if semantic is not None else None,
        "wall_s": round(time.time() - started, 1),  # this invocation (finished arms are reused)
        "arms_train_wall_s": round(
            sum(r.get("train", {}).get("wall_s", 0.0) for rows in runs.values() for r in rows)
            + sum(
                r.get("train_wall_s") or 0.0
                for r in study
                if r["semantic_rate"] != rate  # that one is the a2po seed-0 arm
            ),
            1,
        ),
    }
    write_manifest(ctx, STAGE, "experiment", {}, StageResult(metrics=metrics), started)
    write_report(ctx)
    return metrics


def paired_vs(
    rows: list[dict[str, Any]], base: list[dict[str, Any]], ks: tuple[int, ...] = PAIRED_KS
) -> dict[str, list[float]] | None:
    """HR@k / NDCG@k of one method minus another on the same users, each averaged over its seeds:
    ``{"hr@10": [difference, standard error], …}`` for every k of ``ks`` (paired,
    :func:`~sgrec_ray.metrics.paired_difference`). None when a run was scored before its
    per-user ranks were kept."""
    if any(r.get("ranks") is None for r in (*rows, *base)):
        return None
    out = {}
    for k in ks:
        diff = paired_difference(
            [np.asarray(r["ranks"]) for r in rows], [np.asarray(r["ranks"]) for r in base], k
        )
        out.update({key: [round(d, 6), round(se, 6)] for key, (d, se) in diff.items()})
    return out


def _valid(row: dict[str, Any]) -> dict[str, Any]:
    return (row.get("train") or {}).get("valid") or {}


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(float(np.mean(known)), 6) if known else None


def best_vs_sft(methods: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The arm validation ranks best (mean over seeds of each seed's best validated NDCG@10; test
    never chooses) and its paired test difference from SFT: ``{"arm", "ndcg@10": [d, se],
    "hr@10": [d, se], "valid_ndcg@10", "ndcg@10_ratio"}``."""
    arms = {
        name: m
        for name, m in methods.items()
        if name != "sft" and m.get("valid_ndcg@10") is not None
    }
    if not arms:
        return None
    name = max(arms, key=lambda a: arms[a]["valid_ndcg@10"])
    vs = arms[name].get("vs_sft") or {}
    sft_ndcg = (methods.get("sft") or {}).get("ndcg@10")
    ratio = None
    if vs.get("ndcg@10") and sft_ndcg:
        ratio = round((sft_ndcg + vs["ndcg@10"][0]) / sft_ndcg, 4)
    return {
        "arm": name,
        "ndcg@10": vs.get("ndcg@10"),
        "hr@10": vs.get("hr@10"),
        "valid_ndcg@10": arms[name]["valid_ndcg@10"],
        "ndcg@10_ratio": ratio,
    }


def _safe_div(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def _arm(
    ctx: RunContext,
    scorer: _Scorer,
    prompts: Any,
    arm: str,
    seed: int,
    rate: float,
    semantic: Any,
    force: bool,
) -> dict[str, Any]:
    """Train (or reuse) one arm and score it; cached in ``<arm folder>/result.json``."""
    cfg = ctx.cfg
    rl = dataclasses.replace(cfg.rl, advantage=arm, semantic_rate=rate)
    arm_cfg = dataclasses.replace(cfg, rl=rl, run=dataclasses.replace(cfg.run, seed=seed))
    models = reward_models(rl.business_reward, rl.composite_weights)
    name = f"{arm}-seed{seed}-rate{rate:g}"
    if arm == "grpo":  # grpo ignores semantics: one run serves every rate
        name = f"{arm}-seed{seed}"
    uri = ctx.path(STAGE, name)
    done = storage.join(uri, RESULT_FILE)
    if storage.exists(done) and not force:
        return storage.read_json(done)
    log.info("experiment arm %s", name)
    items = storage.read_table(ctx.path("data", schema.ITEMS_FILE))
    trained = train_policy(
        arm_cfg,
        prompts=prompts,
        sft_uri=ctx.require("sft")["outputs"]["model"],
        stage_uri=uri,
        ranker_uri=ctx.require("ranker")["outputs"]["model"] if "ranker" in models else None,
        sasrec_uri=ctx.require("sasrec")["outputs"]["model"] if "sasrec" in models else None,
        item_value=item_values(cfg, items),
        semantic=semantic if uses_judge(rl) else None,
        run_name=name,
        fresh=force,
        valid=load_valid(ctx),
    )
    result = {
        **scorer.score(name, trained.outputs["model"]),
        "train": trained.metrics,
        "uri": uri,
        "arm": arm,
        "seed": seed,
        "semantic_rate": rate,
    }
    storage.write_json(done, result)
    return result


class _Scorer:
    """Scores any generator checkpoint on the eval split with every experiment measure."""

    def __init__(self, ctx: RunContext, semantic: Any | None) -> None:
        self.ctx, self.semantic = ctx, semantic
        cfg = ctx.cfg
        self.samples = load_eval_samples(ctx)
        self.n_users = self.samples.num_rows
        self.setting = cfg.eval.settings[0]
        items = storage.read_table(ctx.path("data", schema.ITEMS_FILE)).sort_by("item_idx")
        self.n_items = items.num_rows
        self.genres = genre_matrix(items) if "genres" in items.column_names else None
        self.liked = self._liked_targets()
        self.judge_users = min(cfg.experiment.judge_eval_users, self.n_users) if semantic else 0
        self.ranker = None
        models = reward_models(cfg.rl.business_reward, cfg.rl.composite_weights)
        if "ranker" in models and ctx.manifest("ranker"):
            self.ranker = load_ranker(ctx.require("ranker")["outputs"]["model"])

    def _liked_targets(self) -> np.ndarray:
        """bool [users]: the user rated the held-out target as liked (no rating = liked)."""
        inter = storage.read_table(
            self.ctx.path("data", schema.INTERACTIONS_FILE),
            columns=["user_id", "item_idx", "rating"],
        )
        rating = {
            (u, i): r
            for u, i, r in zip(
                inter.column("user_id").to_pylist(),
                inter.column("item_idx").to_pylist(),
                inter.column("rating").to_pylist(),
                strict=True,
            )
        }
        thr = self.ctx.cfg.ranker.positive_min_rating
        users = self.samples.column("user_id").to_pylist()
        targets = self.samples.column("target").to_pylist()
        return np.asarray(
            [
                (r := rating.get((u, t))) is None or r >= thr
                for u, t in zip(users, targets, strict=True)
            ]
        )

    def score(self, name: str, model_uri: str) -> dict[str, Any]:
        k = 10
        kmax = max(max(self.ctx.cfg.eval.ks), k)
        preds = generate_topk(
            self.ctx, self.samples, model_uri, kmax, exclude_seen=self.setting == "exclude_seen"
        )
        ranked = preds.column("items").to_pylist()
        top = [list(r)[:k] for r in ranked]
        targets = self.samples.column("target").to_pylist()
        out: dict[str, Any] = ranking_metrics(
            ranked, targets, [*self.ctx.cfg.eval.ks, 5, k], self.n_items
        )
        # Per-user ranks of the target, so methods can be compared paired over the same users.
        out["ranks"] = target_ranks(ranked, targets).tolist()
        out["genre@10"] = self._genre(top, targets)
        out["pctr@10"] = self._pctr(top)
        out["judge@10"], out["judge_failed@10"] = self._judge(top)
        return out

    def _genre(self, top: list[list[int]], targets: list[int]) -> float | None:
        if self.genres is None:
            return None
        g = self.genres
        shares = [
            np.mean((g[items] & g[t]).any(axis=1))
            for items, t, liked in zip(top, targets, self.liked, strict=True)
            if liked and items and g[t].any()
        ]
        return round(float(np.mean(shares)), 6) if shares else None

    def _pctr(self, top: list[list[int]]) -> float | None:
        if self.ranker is None or not top:
            return None
        hist = [list(h) for h in self.samples.column("history").to_pylist()]
        width = min(len(t) for t in top)
        pctr = self.ranker.predict(hist, np.asarray([t[:width] for t in top], dtype=np.int64))
        return round(float(pctr.mean()), 6)

    def _judge(self, top: list[list[int]]) -> tuple[float | None, int]:
        if not self.judge_users or self.semantic is None:
            return None, 0
        users = self.samples.column("user_id").to_pylist()[: self.judge_users]
        hists = self.samples.column("history").to_pylist()[: self.judge_users]
        req_u = [u for u, items in zip(users, top, strict=False) for _ in items]
        req_h = [h for h, items in zip(hists, top, strict=False) for _ in items]
        req_i = [i for items in top[: self.judge_users] for i in items]
        scores = self.semantic.score(req_u, req_h, req_i)
        ok = [s for s in scores if s is not None]
        return (round(float(np.mean(ok)), 6) if ok else None), len(scores) - len(ok)


def _telemetry(uri: str) -> list[dict[str, Any]]:
    return read_jsonl(storage.join(uri, TELEMETRY_FILE))


def _mean_key(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return round(float(np.mean(values)), 4) if values else None


def mean_std(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of every numeric measure over seeds, plus ``std`` (sample std; 0 for one run)."""
    out: dict[str, Any] = {"runs": len(rows)}
    std: dict[str, float] = {}
    keys = [k for k, v in rows[0].items() if isinstance(v, int | float) and k not in ("seed",)]
    for key in keys:
        values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
        if not values:
            continue
        out[key] = round(float(np.mean(values)), 6)
        std[key] = round(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, 6)
    for key in KEYS:
        out.setdefault(key, None)
    out["std"] = std
    return out


def _study_row(rate: float, result: dict[str, Any]) -> dict[str, Any]:
    train = result.get("train", {})
    return {
        "semantic_rate": rate,
        **{k: result.get(k) for k in ("hr@10", "ndcg@10", "judge@10", "genre@10", "pctr@10")},
        "judge_pairs": train.get("total_judge_pairs", 0),
        "judge_seconds": train.get("total_judge_s", 0.0),
        "judged_groups": train.get("total_judged_groups", 0),
        "train_wall_s": train.get("wall_s"),
    }


def constant_share_by_reward(telemetry: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Per business reward, the mean over every arm's steps (first seed) of the share of groups it
    would leave constant on those rollouts (the a2po loop scores each reward its models allow)."""
    values: dict[str, list[float]] = {}
    for rows in telemetry.values():
        for r in rows:
            for name, share in (r.get("constant_share_by_reward") or {}).items():
                if share is not None:
                    values.setdefault(name, []).append(share)
    return {name: round(float(np.mean(v)), 4) for name, v in values.items()}


def _rule_constant_share(telemetry: dict[str, list[dict[str, Any]]]) -> float | None:
    """Share of groups whose *rule* reward would be constant: groups without the true item.

    Read from the runs' ``target_in_group`` (rule is constant exactly when the target is absent),
    so the report shows why the default business reward is the dense ranker.
    """
    values = [
        r["target_in_group"]
        for t in telemetry.values()
        for r in t
        if r.get("target_in_group") is not None
    ]
    return round(1.0 - float(np.mean(values)), 4) if values else None


def _plots(
    ctx: RunContext,
    methods: dict[str, dict[str, Any]],
    study: list[dict[str, Any]],
    telemetry: dict[str, list[dict[str, Any]]],
) -> dict[str, str]:
    """Bar chart of the table, the rate study, and seed-0 training curves; run-relative paths."""

    plt = pyplot()

    out: dict[str, str] = {}
    keys = [
        k
        for k in ("hr@10", "ndcg@10", "genre@10", "judge@10")
        if any(m.get(k) is not None for m in methods.values())
    ]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.0), squeeze=False)
    names = list(methods)
    for ax, key in zip(axes.flat, keys, strict=True):
        vals = [methods[n].get(key) or 0.0 for n in names]
        errs = [methods[n]["std"].get(key, 0.0) for n in names]
        ax.bar(range(len(names)), vals, yerr=errs, capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_png(fig, ctx.path(STAGE, "methods.png"), dpi=100)
    out["Methods (mean ± std over seeds)"] = f"{STAGE}/methods.png"

    if study:
        fig, ax1 = plt.subplots(figsize=(5, 3.2))
        rates = [r["semantic_rate"] for r in study]
        ax1.plot(rates, [r["hr@10"] or 0 for r in study], marker="o", label="HR@10")
        ax1.plot(rates, [r["ndcg@10"] or 0 for r in study], marker="s", label="NDCG@10")
        ax1.set_xscale("symlog", linthresh=0.01)
        ax1.set_xlabel("semantic_rate")
        ax2 = ax1.twinx()
        ax2.bar(
            rates,
            [r["judge_pairs"] for r in study],
            width=[max(r * 0.3, 0.005) for r in rates],
            alpha=0.3,
            color="gray",
        )
        ax2.set_ylabel("judge calls (pairs)")
        ax1.legend(fontsize=8)
        fig.tight_layout()
        save_png(fig, ctx.path(STAGE, "semantic_rate_study.png"), dpi=100)
        out["Semantic-rate study (A2PO, first seed)"] = f"{STAGE}/semantic_rate_study.png"
    if telemetry:
        plot_curves(telemetry, ctx.path(STAGE, "curves.png"))
        out["Training curves (first seed)"] = f"{STAGE}/curves.png"
    return out


def paired_line(label: str, vs: dict[str, list[float]] | None, base: dict[str, Any] | None) -> str:
    """One sentence on a paired difference: its size, its ratio to the baseline, and whether it
    clears twice its standard error (the bar a claim needs here)."""
    if not vs or not base or not base.get("ndcg@10"):
        return f"{label}: no paired figure (arms scored before per-user ranks were kept; --force)."
    d, se = vs["ndcg@10"]
    dh, seh = vs["hr@10"]
    verdict = (
        "larger than twice its standard error"
        if abs(d) > 2 * se
        else "within twice its standard error, so not evidence either way"
    )
    return (
        f"{label}, paired over the same users (each averaged over its seeds): NDCG@10 {d:+.4f} ± "
        f"{se:.4f} ({(base['ndcg@10'] + d) / base['ndcg@10']:.3f}×), HR@10 {dh:+.4f} ± {seh:.4f}; "
        f"the NDCG@10 difference is {verdict}."
    )


def reading(
    methods: dict[str, dict[str, Any]], study: list[dict[str, Any]], cfg: Config
) -> list[str]:
    """Plain sentences on the paper's claims, computed from the numbers (a difference smaller
    than the seeds' spread is called what it is: not evidence)."""

    def cmp(a: str, b: str, key: str) -> str:
        ma, mb = methods.get(a), methods.get(b)
        if not ma or not mb or ma.get(key) is None or mb.get(key) is None:
            return f"{a} vs {b} on {key}: not measured"
        diff = ma[key] - mb[key]
        spread = max(ma["std"].get(key, 0.0), mb["std"].get(key, 0.0))
        verdict = (
            "within the seed spread — no evidence either way"
            if abs(diff) <= spread or diff == 0
            else ("higher" if diff > 0 else "lower")
        )
        return f"{a} {fmt_mean_std(ma, key)} vs {b} {fmt_mean_std(mb, key)} on {key}: {verdict}"

    n = len(cfg.experiment.seeds)
    lines = [
        f"Claim 1 (A2PO improves on SFT): {cmp('a2po', 'sft', 'hr@10')}; {cmp('a2po', 'sft', 'ndcg@10')}.",
        f"Claim 2 (A2PO improves on Adv-Sum): {cmp('a2po', 'adv_sum', 'hr@10')}; "
        f"{cmp('a2po', 'adv_sum', 'genre@10')}.",
        f"Semantics beyond business: {cmp('a2po', 'grpo', 'judge@10')}; {cmp('a2po', 'grpo', 'genre@10')} "
        "(judge@10 uses the judge that trained the semantic arms; genre@10 does not).",
    ]
    a2po = methods.get("a2po") or {}
    lines += [
        paired_line("A2PO − SFT", a2po.get("vs_sft"), methods.get("sft")),
        paired_line("A2PO − GRPO (business only)", a2po.get("vs_grpo"), methods.get("grpo")),
    ]
    rs, a2 = methods.get("reward_sum"), methods.get("a2po")
    if rs and a2 and rs.get("hr@10") is not None and a2.get("hr@10") is not None:
        lines.append(
            f"Claim 3 (Reward-Sum is unstable): HR@10 {fmt_mean_std(rs, 'hr@10')} vs A2PO {fmt_mean_std(a2, 'hr@10')} "
            f"over {n} seed(s); a collapse would show as a large drop or a large std."
        )
    by_rate = {r["semantic_rate"]: r for r in study}
    lo, hi = by_rate.get(0.05), by_rate.get(max(by_rate) if by_rate else None)
    if lo and hi and hi is not lo:
        lines.append(
            f"Claim 4 (5% sampling keeps ~99% of full-rate quality at ~1/20 the judge cost): at rate "
            f"0.05 HR@10 is {lo['hr@10_vs_full']} of rate {hi['semantic_rate']:g}'s with "
            f"{lo['judge_pairs']} vs {hi['judge_pairs']} judge calls "
            f"({lo['judge_pairs_vs_full']} of the cost); one seed, so read the quality ratio with the "
            "main table's std in mind."
        )
    lines.append(
        "Scale caveat: a small generator, a 135M-parameter judge and few RL steps on CPU; the "
        "paper used Qwen2.5-1.5B / Qwen3-4B on GPUs. Effects of a few percent are below what this "
        "setting can resolve."
    )
    return lines
