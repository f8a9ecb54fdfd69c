"""The endpoint's request path in-process, fuzzed: thousands of generated bodies and raw byte
strings through exactly the code the Ingress and Model deployments run (gateway.recommend,
parse_request, ServingModel.resolve/answer on the tiny run's real checkpoint), and never a 5xx.

Real HTTP manages a few dozen requests a second on a shared 2-core machine; test_app.py keeps a
smaller fuzz of the same invariant over HTTP. Also here: what an unexpected error looks like.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgrec_ray.serving import gateway
from sgrec_ray.serving.engine import ServingModel
from sgrec_ray.serving.gateway import Limits, Reply
from sgrec_ray.serving.metrics import AppMetrics
from sgrec_ray.serving.sources import resolve_sources
from tests.serving.strategies import bodies

LIMITS = Limits(k_default=10, k_max=50, max_history=500)
FUZZ_BODIES = 1000
FUZZ_BYTES = 600


@pytest.fixture(scope="module")
def model(tiny_run) -> ServingModel:
    return ServingModel.load(resolve_sources(tiny_run.cfg), beam_width=4)


def _reply(model: ServingModel, raw: bytes) -> Reply:
    async def call_model(req):  # what Model.recommend does for a batch of one
        return gateway.answer_batch(model, [req])[0]

    return asyncio.run(gateway.recommend(raw, LIMITS, call_model))


def _check(reply: Reply, raw: bytes) -> None:
    assert reply.status in (200, 400, 413, 422), (raw[:200], reply.status, reply.body)
    json.dumps(reply.body)  # every body is JSON-serialisable
    if reply.status != 200:
        assert reply.body["error"] and reply.body["detail"]


def test_fuzzed_bodies_never_get_a_5xx(model):
    seen = []

    @settings(max_examples=FUZZ_BODIES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(raw=bodies(model.catalogue.item_ids))
    def check(raw: bytes) -> None:
        reply = _reply(model, raw)
        _check(reply, raw)
        seen.append(reply.status)

    check()
    assert len(seen) >= FUZZ_BODIES * 0.9  # hypothesis ran them (it may stop early on duplicates)
    assert {200, 400, 422} <= set(seen)  # the fuzz reached the model, the parser and validation


def test_fuzzed_raw_bytes_never_get_a_5xx(model):
    seen = []

    @settings(max_examples=FUZZ_BYTES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(raw=st.binary(max_size=256) | st.text(max_size=128).map(str.encode))
    def check(raw: bytes) -> None:
        reply = _reply(model, raw)
        _check(reply, raw)
        seen.append(reply.status)

    check()
    assert len(seen) >= FUZZ_BYTES * 0.5


def test_history_over_the_request_limit_is_a_422(model):
    ids = model.catalogue.item_ids
    reply = _reply(model, json.dumps({"history": [ids[0]] * 501}).encode())
    assert reply.status == 422 and "at most 500" in reply.body["detail"]
    assert _reply(model, json.dumps({"history": [ids[0]] * 500}).encode()).status == 200


def test_health_probe_decodes_a_real_request(model):
    answer = model.probe()
    assert len(answer.items) == 1 and answer.items[0].score is not None


def test_unexpected_error_is_a_500_with_a_request_id_logged_and_counted(caplog):
    metrics = AppMetrics(ray_export=False)

    async def broken() -> Reply:
        raise RuntimeError("secret internals at /srv/models/ckpt.pt")

    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        reply = asyncio.run(gateway.guarded("recommend", broken, metrics.observe_internal_error))
    assert reply.status == 500
    request_id = reply.body["request_id"]
    assert reply.body["error"] == "internal" and reply.headers["X-Request-ID"] == request_id
    assert "secret" not in json.dumps(reply.body) and "RuntimeError" not in json.dumps(reply.body)
    (record,) = [r for r in caplog.records if request_id in r.getMessage()]
    assert record.exc_info and "secret internals" in str(record.exc_info[1])  # the stack is logged
    text = metrics.render().decode()
    assert 'sgrec_internal_errors_total{endpoint="recommend"} 1.0' in text
