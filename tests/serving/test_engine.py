"""The library side without Serve: request parsing, catalogue checks, sources, engine answers."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pyarrow as pa
import pytest

from sgrec_ray import storage
from sgrec_ray.runs import RunContext
from sgrec_ray.serving.catalogue import CatalogueMismatchError, check_compatible, load_catalogue
from sgrec_ray.serving.engine import ServingModel
from sgrec_ray.serving.schema import RequestError, parse_query, parse_request
from sgrec_ray.serving.sources import latest_checkpoint, resolve_sources


@pytest.fixture(scope="module")
def model(tiny_run) -> ServingModel:
    return ServingModel.load(resolve_sources(tiny_run.cfg), beam_width=10)


def _copy_sid(tiny_run: RunContext, dst) -> str:
    out = str(dst / "sid")
    shutil.copytree(tiny_run.stage_uri("sid"), out)
    return out


def test_parse_request_defaults_and_bounds():
    req = parse_request(b'{"history": [242, "302"]}', k_default=7, k_max=20)
    assert req.history == ["242", "302"] and req.k == 7 and req.exclude_seen is True
    for body, status in [(b"{", 400), (b"[]", 422), (b'{"user_id": 1, "k": 21}', 422)]:
        with pytest.raises(RequestError) as err:
            parse_request(body, 7, 20)
        assert err.value.status == status


def test_parse_query_is_as_strict_as_the_body():
    req = parse_query([("user_id", "42"), ("k", "3"), ("exclude_seen", "false")], 7, 20)
    assert (req.user_id, req.k, req.exclude_seen) == ("42", 3, False)
    assert parse_query([("user_id", "42")], 7, 20).k == 7
    for params in (
        [("user_id", "1"), ("k", "-1")],
        [("user_id", "1"), ("k", "21")],
        [("user_id", "1"), ("exclude_seen", "yes")],
        [("user_id", "1"), ("user_id", "2")],
        [("user_id", "1"), ("history", "1,2")],
        [],
    ):
        with pytest.raises(RequestError) as err:
            parse_query(params, 7, 20)
        assert err.value.status == 422, params


def test_sources_prefer_the_newest_stage(tiny_run, tmp_path):
    stage, uri = latest_checkpoint(tiny_run)
    assert stage == "sft" and uri == tiny_run.manifest("sft")["outputs"]["model"]
    empty = RunContext(
        dataclasses.replace(
            tiny_run.cfg, run=dataclasses.replace(tiny_run.cfg.run, storage=str(tmp_path))
        )
    )
    with pytest.raises(FileNotFoundError, match="no generator checkpoint"):
        latest_checkpoint(empty)


def test_answers_match_the_recommender(model):
    """A batch through the engine gives each request exactly what the Recommender gives it alone."""
    users = list(model.catalogue.histories)[:3]
    reqs = [
        parse_request(f'{{"user_id": "{u}", "k": {k}}}'.encode(), 10, 50)
        for u, k in zip(users, (1, 5, 10), strict=True)
    ]
    answers = model.answer([model.resolve(r) for r in reqs])
    for req, ans in zip(reqs, answers, strict=True):
        full = model.catalogue.histories[req.user_id].tolist()
        (alone,) = model.rec.recommend(
            [full[-model.max_history :]], k=req.k, exclude=[set(full)], beam_width=10
        )
        assert [a.item_id for a in ans.items] == [model.catalogue.item_ids[i] for i, _ in alone]
        assert np.allclose([a.score for a in ans.items], [s for _, s in alone], atol=1e-4)
        assert not set(a.item_id for a in ans.items) & {model.catalogue.item_ids[i] for i in full}


def test_swapped_sids_fail_loudly_at_load(tiny_run, model, tmp_path):
    sid = _copy_sid(tiny_run, tmp_path)
    table = storage.read_table(f"{sid}/sid_table.parquet").sort_by("item_idx")
    codes = table.column("codes").to_pylist()
    codes[0], codes[1] = codes[1], codes[0]
    table = table.set_column(
        table.schema.get_field_index("codes"),
        "codes",
        pa.array(codes, type=table.schema.field("codes").type),
    )
    storage.write_table(f"{sid}/sid_table.parquet", table)
    sources = dataclasses.replace(resolve_sources(tiny_run.cfg), sid=sid)
    with pytest.raises(CatalogueMismatchError, match=r"2 of \d+ items have different SIDs"):
        ServingModel.load(sources)


def test_vocab_and_item_count_mismatch(tiny_run, model, tmp_path):
    sid = _copy_sid(tiny_run, tmp_path)
    vocab = storage.read_json(f"{sid}/vocab.json")
    vocab["level_sizes"] = [s + 1 for s in vocab["level_sizes"]]
    storage.write_text(f"{sid}/vocab.json", json.dumps(vocab))
    cat = load_catalogue(tiny_run.stage_uri("data"), sid)
    with pytest.raises(CatalogueMismatchError, match="SID vocabulary"):
        check_compatible(cat, model.rec.generator, "ckpt")
    smaller = dataclasses.replace(model.catalogue, item_ids=model.catalogue.item_ids[:-1])
    with pytest.raises(CatalogueMismatchError, match="items, the catalogue has"):
        check_compatible(smaller, model.rec.generator, "ckpt")
