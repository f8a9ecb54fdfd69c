"""The judge stage on a small synthetic run: Ray Data actor pool, Parquet parts, resume, bad input."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sgrec_ray import storage
from sgrec_ray.config import load_config
from sgrec_ray.data import schema
from sgrec_ray.judge import stage
from sgrec_ray.judge.checks import preflight
from sgrec_ray.judge.engines import JudgeSetupError
from sgrec_ray.judge.rows import prompt_spec, scores_schema
from sgrec_ray.runs import RunContext, StageResult, write_manifest
from tests.conftest import REPO

N_ITEMS = 24
OVERRIDES = [
    "judge.max_users=3",
    "judge.n_random=1",
    "judge.n_hard=1",
    "judge.n_beams=0",
    "judge.batch_size=3",  # whole users: one user (3 candidates) per chunk
    "judge.max_prompt_tokens=480",  # the long-history user must be truncated
    "judge.long_history=30",
    "judge.pair_items=false",  # test_pair_items_join_their_users covers them
]


def make_run(root, extra: list[str] | None = None) -> RunContext:
    """data/ and sid/ artifacts of a 3-user run: one user with no history, one with a long one."""
    cfg = load_config(
        REPO / "configs" / "tiny.yaml", [f"run.storage={root}/runs", *OVERRIDES, *(extra or [])]
    )
    ctx = RunContext(cfg)
    titles = [
        f"Movie number {i}: a rather long and winding title ({1980 + i})" for i in range(N_ITEMS)
    ]
    titles[7] = None
    items = pa.table(
        {
            "item_idx": pa.array(range(N_ITEMS), pa.int32()),
            "item_id": [f"i{i}" for i in range(N_ITEMS)],
            "title": titles,
            "text": ["" if i in (3, 7) else f"Film {i}. Genres: Drama" for i in range(N_ITEMS)],
            "genres": ["Drama"] * N_ITEMS,
        }
    )
    storage.write_table(ctx.path("data", schema.ITEMS_FILE), items)
    storage.write_table(
        ctx.path("data", schema.USERS_FILE),
        pa.table({"user_id": ["a", "b"], "age": [30, 41], "gender": ["F", "M"]}),
    )
    samples = pa.table(
        {
            "user_id": ["a", "b", "c"],
            "history": [[1, 2, 3], [], list(range(8, 23))],
            "target": [5, 6, 23],
            "timestamp": [1, 2, 3],
            "seen": [[1, 2, 3], [], list(range(8, 23))],
        },
        schema=schema.SAMPLES,
    )
    storage.write_table(ctx.path("data", schema.VALID_FILE), samples)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(N_ITEMS, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    storage.write_table(
        ctx.path("sid", "embeddings.parquet"),
        pa.table({"item_idx": pa.array(range(N_ITEMS), pa.int32()), "embedding": emb.tolist()}),
    )
    return ctx


def keys(table: pa.Table) -> list[tuple]:
    return list(zip(*(table.column(k).to_pylist() for k in stage.KEY), strict=True))


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, ray_session):
    """Interrupt the stage after its first chunk, rerun it, then run it once more."""
    ctx = make_run(tmp_path_factory.mktemp("judge_stage"))
    cfg = ctx.cfg.judge
    items = storage.read_table(ctx.path("data", schema.ITEMS_FILE))
    table = stage.build_candidate_table(ctx, cfg, N_ITEMS)
    first = stage.judge_pending(ctx, table, items, None, preflight(cfg), max_chunks=1)
    after_first = stage.load_scores(ctx)
    result = stage.run(ctx)
    again = stage.run(ctx)
    return ctx, table, first, after_first, result, again


@pytest.mark.slow  # its fixture runs the judge stage three times: ~110 s on 2 cores
def test_interrupted_run_resumes_without_duplicates(resumed):
    ctx, table, first, after_first, result, again = resumed
    assert first["chunks"] == 1 and after_first.num_rows == 3
    scores = stage.load_scores(ctx)
    assert scores.num_rows == table.num_rows == 9
    assert len(set(keys(scores))) == scores.num_rows  # no duplicates
    spec = prompt_spec(ctx.cfg.judge)
    expected = {(*key, spec.prompt_hash) for key in stage.candidate_keys(table, spec)}
    assert set(keys(scores)) == expected  # nothing lost, each row in the context it was asked in
    assert set(keys(after_first)) <= set(keys(scores))  # first chunk kept, not judged again
    m = result.metrics
    assert (m["resumed_pairs"], m["judged_this_run"]) == (3, 6)
    assert again.metrics["judged_this_run"] == 0 and again.metrics["pairs"] == 9


@pytest.mark.slow  # its fixture runs the judge stage three times: ~110 s on 2 cores
def test_output_schema_and_metrics(resumed):
    ctx, _, _, _, result, _ = resumed
    folder = storage.read_table(ctx.path("judge", "scores"))  # the folder reads as one table
    scores = stage.load_scores(ctx)
    assert folder.num_rows == scores.num_rows
    assert scores.schema.equals(scores_schema(["profile", "future", "novelty"]))
    assert set(scores.column("status").to_pylist()) == {"ok"}
    assert scores.column("origin").value_counts().to_pylist() and set(
        scores.column("origin").to_pylist()
    ) == {"target", "hard", "random"}
    truncated = {
        u
        for u, t in zip(
            scores.column("user_id").to_pylist(),
            scores.column("truncated").to_pylist(),
            strict=True,
        )
        if t
    }
    assert truncated == {"c"}  # only the long history was cut
    m = result.metrics
    assert m["failed"] == 0 and m["failed_by_reason"] == {} and m["truncated"] == 3
    assert m["items_without_text"] == 2 and m["model"] == "smollm2-135m-gguf"
    assert m["prompt_hash"] == prompt_spec(ctx.cfg.judge).prompt_hash and m["pairs_per_s"] > 0
    assert set(m["score_mean"]) == {"profile", "future", "novelty"}
    assert all(1 <= v <= 5 for v in m["score_mean"].values())
    assert set(m["score_mean_by_origin"]) == {"target", "hard", "random"}
    assert result.outputs["scores"] == ctx.path("judge", "scores")
    assert storage.read_table(result.outputs["candidates"]).num_rows == 9


def test_stale_rows_are_pruned(tmp_path):
    """Rows from another prompt/model, or for candidates no longer asked for, leave the folder."""
    target = scores_schema(["profile"])
    out = str(tmp_path / "scores")

    def part(rows):
        cols = {f.name: [r.get(f.name) for r in rows] for f in target}
        stage._write_part(out, pa.table(cols, schema=target))

    identity = ("h1", "m", None)
    row = {"prompt_hash": "h1", "model": "m", "status": "ok", "context": "c"}
    part([{**row, "user_id": "a", "item_idx": 1}])
    part(
        [
            {**row, "user_id": "a", "item_idx": 2, "prompt_hash": "h0"},
            {**row, "user_id": "b", "item_idx": 1},
            {**row, "user_id": "b", "item_idx": 1, "context": "other"},  # another context
        ]
    )
    part([{**row, "user_id": "z", "item_idx": 9}])
    (tmp_path / "scores" / "part-broken.parquet").write_bytes(b"not parquet")
    wanted = {("a", 1, "c"), ("a", 2, "c"), ("b", 1, "c")}
    done = stage._existing_keys(out, identity, wanted, target)
    assert done == {("a", 1, "c"), ("b", 1, "c")}
    left = storage.read_table(out)
    assert sorted(keys(left)) == [("a", 1, "c", "h1"), ("b", 1, "c", "h1")]


def test_score_files_without_a_context_are_judged_again(tmp_path):
    """Rows written before scores carried the history's context cannot say what they judged."""
    target = scores_schema(["profile"])
    out = str(tmp_path / "scores")
    old = target.remove(target.get_field_index("context"))
    row = {"user_id": "a", "item_idx": 1, "prompt_hash": "h1", "model": "m", "status": "ok"}
    (tmp_path / "scores").mkdir()
    pq.write_table(
        pa.table({f.name: [row.get(f.name)] for f in old}, schema=old),
        tmp_path / "scores" / "part-old.parquet",
    )
    assert stage._existing_keys(out, ("h1", "m", None), {("a", 1, "c")}, target) == set()
    assert stage._part_files(out) == []  # removed: nothing in it can be reused


def test_user_chunks_keep_users_whole():
    t = pa.table({"user_id": ["a"] * 3 + ["b"] * 2 + ["c"] * 7 + ["d"]})
    chunks = [c.column("user_id").to_pylist() for c in stage.user_chunks(t, 4)]
    # a and b do not fit together; c alone is too big and is split; d joins c's tail.
    assert chunks == [["a"] * 3, ["b"] * 2, ["c"] * 4, ["c"] * 3 + ["d"]]


def test_missing_model_fails_before_any_work(tmp_path):
    ctx = make_run(tmp_path, ["judge.model=/nonexistent/judge-model"])
    with pytest.raises(JudgeSetupError, match=r"judge\.model"):
        stage.run(ctx)
    assert not storage.exists(ctx.stage_uri("judge"))


def test_beam_candidates_come_from_the_sft_model(tmp_path, monkeypatch):
    ctx = make_run(tmp_path, ["judge.n_beams=2"])
    write_manifest(ctx, "sft", "fp", {}, StageResult(outputs={"model": "/models/sft"}), 0.0)
    seen_args = {}

    def fake_beams(model_uri, samples, k):
        seen_args.update(uri=model_uri, k=k, n=samples.num_rows)
        return [[5, 11], [12, 13], [23, 14]]  # 23 is c's target, 14 was seen by c

    monkeypatch.setattr(stage.cands, "sft_beams", fake_beams)
    table = stage.build_candidate_table(ctx, ctx.cfg.judge, N_ITEMS)
    assert seen_args == {"uri": "/models/sft", "k": 2, "n": 3}
    rows = [(r["user_id"], r["item_idx"], r["origin"]) for r in table.to_pylist()]
    assert ("a", 5, "target") in rows and ("a", 11, "beam") in rows and ("a", 5, "beam") not in rows
    assert ("c", 23, "target") in rows and not any(r[0] == "c" and r[2] == "beam" for r in rows)


def test_pair_items_join_their_users(tmp_path):
    """Pair items of the judged users become ``pair`` rows after the user's candidates, each in
    its pair's own context; a (user, item, context) that is already a candidate keeps its
    candidate row; users outside the sample get none."""
    ctx = make_run(tmp_path, ["judge.pair_items=true"])
    # a watched 1, 2, 3 (neutral), then liked 9, disliked 10, liked 5 → pairs (9, 10) judged
    # after [1, 2, 3] (a's candidate context too) and (5, 10) after [1, 2, 3, 9].
    # d: not in the judged sample, so its pairs are not judged here.
    events = [
        ("a", 1, 1, 3.0),
        ("a", 2, 2, 3.0),
        ("a", 3, 3, 3.0),
        ("a", 9, 10, 5.0),
        ("a", 10, 11, 1.0),
        ("a", 5, 12, 4.0),
        ("d", 1, 5, 5.0),
        ("d", 2, 6, 1.0),
    ]
    storage.write_table(
        ctx.path("data", schema.INTERACTIONS_FILE),
        pa.table(
            {
                "user_id": [e[0] for e in events],
                "item_idx": pa.array([e[1] for e in events], pa.int32()),
                "timestamp": pa.array([e[2] for e in events], pa.int64()),
                "rating": pa.array([e[3] for e in events], pa.float32()),
                "value": pa.nulls(len(events), pa.float32()),
            },
            schema=schema.INTERACTIONS,
        ),
    )
    table = stage.build_candidate_table(ctx, ctx.cfg.judge, N_ITEMS)
    rows = [(r["user_id"], r["item_idx"], tuple(r["history"])) for r in table.to_pylist()]
    assert len(set(rows)) == len(rows)  # one row per judgement
    wanted = {
        ("a", 9, (1, 2, 3)),
        ("a", 10, (1, 2, 3)),
        ("a", 5, (1, 2, 3, 9)),
        ("a", 10, (1, 2, 3, 9)),
    }
    assert wanted <= set(rows)
    pair_rows = [r for r in table.to_pylist() if r["origin"] == "pair"]
    assert {(r["user_id"], r["item_idx"], tuple(r["history"])) for r in pair_rows} <= wanted
    # a's target 5 is judged twice: as the candidate after [1, 2, 3], as a pair item after 9.
    assert ("a", 5, (1, 2, 3)) in rows and table.to_pylist()[0]["origin"] == "target"
    users = table.column("user_id").to_pylist()
    assert users == sorted(users, key=["a", "b", "c"].index)  # each user's rows stay together
    assert all(r["split"] == "pairs" and r["timestamp"] is None for r in pair_rows)


def test_pair_items_are_skipped_without_feedback(tmp_path):
    ctx = make_run(tmp_path, ["judge.pair_items=true"])
    events = pa.table(
        {
            "user_id": ["a"],
            "item_idx": pa.array([1], pa.int32()),
            "timestamp": pa.array([1], pa.int64()),
            "rating": pa.nulls(1, pa.float32()),
            "value": pa.nulls(1, pa.float32()),
        },
        schema=schema.INTERACTIONS,
    )
    storage.write_table(ctx.path("data", schema.INTERACTIONS_FILE), events)
    table = stage.build_candidate_table(ctx, ctx.cfg.judge, N_ITEMS)
    assert "pair" not in table.column("origin").to_pylist() and table.num_rows == 9
