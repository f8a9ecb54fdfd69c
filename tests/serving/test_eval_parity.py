"""What the endpoint recommends is what the eval stage scored: same checkpoint, same histories,
same items in the same order, for 100 users (the serving engine decodes one request at a time,
through the lean forward; the eval stage decodes batches of users on its Ray Data actors)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sgrec_ray import storage
from sgrec_ray.eval.stage import generate_topk
from sgrec_ray.serving.engine import ServingModel
from sgrec_ray.serving.schema import RecommendRequest
from sgrec_ray.serving.sources import resolve_sources

N_USERS = 100


def test_served_top_k_equals_the_eval_stage_on_100_users(tiny_run):
    cfg = tiny_run.cfg
    # The tiny run has 80 users per split: its test and validation samples give 100 histories.
    splits = [storage.read_table(tiny_run.path("data", f"{s}.parquet")) for s in ("test", "valid")]
    samples = pa.concat_tables(splits).slice(0, N_USERS)
    assert samples.num_rows == N_USERS
    k = 10
    sources = resolve_sources(cfg)
    evaluated = generate_topk(tiny_run, samples, sources.checkpoint, k, exclude_seen=True)

    engine = ServingModel.load(sources, beam_width=max(cfg.eval.beam_width, k))
    ids = engine.catalogue.item_ids
    same = 0
    for row, items, scores in zip(
        samples.to_pylist(),
        evaluated.column("items").to_pylist(),
        evaluated.column("scores").to_pylist(),
        strict=True,
    ):
        # The sample's history is the newest max_history of everything seen before the target.
        assert row["history"] == row["seen"][-len(row["history"]) :]
        req = RecommendRequest(history=[ids[i] for i in row["seen"]], k=k, exclude_seen=True)
        (answer,) = engine.answer([engine.resolve(req)])
        assert [it.item_id for it in answer.items] == [ids[i] for i in items], row["user_id"]
        np.testing.assert_allclose([it.score for it in answer.items], scores, atol=1e-4)
        same += 1
    assert same == N_USERS
