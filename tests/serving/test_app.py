"""The app on a real local Ray Serve over HTTP: happy path, every bad input, fuzzing, metrics,
overload, hot reload. One app for the module (see conftest.served); tests that change the
deployment (overload, reload) come last.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgrec_ray.serving.catalogue import load_catalogue
from tests.serving.conftest import BATCHING, deploy


@pytest.fixture(scope="module")
def client(served):
    url, _ = served
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def catalogue(tiny_run):
    return load_catalogue(tiny_run.stage_uri("data"), tiny_run.stage_uri("sid"))


def _post(client: httpx.Client, body) -> httpx.Response:
    return client.post("/v1/recommend", json=body)


def test_recommend_by_user_id(client, catalogue):
    user = next(iter(catalogue.histories))
    r = _post(client, {"user_id": user, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    ids = [it["item_id"] for it in body["items"]]
    assert len(ids) == len(set(ids)) == 5
    seen = {catalogue.item_ids[i] for i in catalogue.histories[user]}
    assert not set(ids) & seen  # exclude_seen defaults to true
    assert body["fallback"] is None and body["history_source"] == "user"
    assert all(
        it["score"] < 0 and it["sid"].startswith("<a_") and it["title"] for it in body["items"]
    )
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert body["model"]["checkpoint_id"] == client.get("/v1/model").json()["checkpoint_id"]


def test_recommend_by_history(client, catalogue):
    history = catalogue.item_ids[:3]
    plain = _post(client, {"history": history, "k": 50, "exclude_seen": False}).json()
    excl = _post(client, {"history": [int(h) for h in history], "k": 50}).json()
    assert len(plain["items"]) == len(excl["items"]) == 50
    assert not {it["item_id"] for it in excl["items"]} & set(history)
    assert plain["history_source"] == "request" and plain["history_used"] == 3
    assert excl["excluded"] == 3 and plain["excluded"] == 0


def test_long_history_is_truncated_and_flagged(client, catalogue):
    max_h = client.get("/v1/model").json()["max_history"]
    body = _post(client, {"history": catalogue.item_ids[: max_h + 5]}).json()
    assert body["history_truncated"] is True and body["history_used"] == max_h
    short = _post(client, {"history": catalogue.item_ids[:2]}).json()
    assert short["history_truncated"] is False


@pytest.mark.parametrize(
    ("body", "reason"),
    [({"user_id": "no-such-user"}, "unknown_user"), ({"history": []}, "empty_history")],
)
def test_popularity_fallback_is_flagged(client, catalogue, body, reason):
    r = _post(client, {**body, "k": 4})
    assert r.status_code == 200
    out = r.json()
    assert out["fallback"] == "popularity" and out["fallback_reason"] == reason
    expected = [catalogue.item_ids[i] for i in catalogue.popularity[:4]]
    assert [it["item_id"] for it in out["items"]] == expected
    assert all(it["score"] is None for it in out["items"])


BAD = [
    (b"{not json", 400, "invalid_json"),
    (b"", 400, "invalid_json"),
    (b"\xff\xfe\x00", 400, "invalid_json"),
    (b"[1, 2]", 422, "invalid_request"),
    (b"null", 422, "invalid_request"),
    (b"{}", 422, "invalid_request"),
    (b'{"user_id": 1, "k": "10"}', 422, "invalid_request"),
    (b'{"user_id": 1, "k": true}', 422, "invalid_request"),
    (b'{"user_id": 1, "k": 2.5}', 422, "invalid_request"),
    (b'{"user_id": 1, "k": 0}', 422, "invalid_request"),
    (b'{"user_id": 1, "k": 51}', 422, "invalid_request"),
    (b'{"user_id": 1, "k": 99999999999999999999999}', 422, "invalid_request"),
    (b'{"user_id": [1]}', 422, "invalid_request"),
    (b'{"user_id": ""}', 422, "invalid_request"),
    (b'{"history": "1 2 3"}', 422, "invalid_request"),
    (b'{"history": [1.5]}', 422, "invalid_request"),
    (b'{"history": [null]}', 422, "invalid_request"),
    (b'{"history": [{"id": 1}]}', 422, "invalid_request"),
    (b'{"user_id": 1, "exclude_seen": "yes"}', 422, "invalid_request"),
    (b'{"user_id": 1, "extra": 1}', 422, "invalid_request"),
    (b'{"history": ["1", "no-such-item", "also-missing"]}', 422, "unknown_items"),
    (b'{"history": [' + b"1," * 2100 + b"1]}", 413, "too_large"),
]


@pytest.mark.parametrize(
    ("raw", "status", "error"), BAD, ids=[f"{s}-{e}-{i}" for i, (_, s, e) in enumerate(BAD)]
)
def test_bad_input_is_a_4xx(client, raw, status, error):
    r = client.post("/v1/recommend", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == error and body["detail"]
    if error == "unknown_items":
        assert body["unknown_item_ids"] == ["no-such-item", "also-missing"]
        assert "no-such-item" in body["detail"]


def test_chunked_body_over_the_limit_is_413(client):
    def chunks():  # no Content-Length: the limit must be enforced while reading
        yield b'{"history": ['
        for _ in range(500):
            yield b'"1", "1", "1", '
        yield b'"1"]}'

    r = client.post("/v1/recommend", content=chunks())
    assert r.status_code == 413


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def bodies(draw, item_ids: list[str]) -> bytes:
    """Mostly plausible requests with wrong parts, sometimes raw garbage."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=64))
    keys = draw(st.sets(st.sampled_from(["user_id", "history", "k", "exclude_seen", "x"])))
    real_id = st.sampled_from(item_ids)
    value = {
        "user_id": st.one_of(st.text(max_size=6), st.integers(0, 2000), JSON),
        "history": st.one_of(
            st.lists(st.one_of(real_id, st.integers(-5, 2000)), max_size=30), JSON
        ),
        "k": st.one_of(st.integers(-3, 60), JSON),
        "exclude_seen": st.one_of(st.booleans(), JSON),
        "x": JSON,
    }
    return json.dumps({key: draw(value[key]) for key in keys}).encode()


def test_fuzzed_bodies_never_get_a_5xx(client, catalogue):
    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
    @given(raw=bodies(catalogue.item_ids))
    def check(raw: bytes) -> None:
        r = client.post("/v1/recommend", content=raw)
        assert r.status_code in (200, 400, 413, 422), (raw, r.status_code, r.text)

    check()
    assert client.get("/healthz").status_code == 200  # and the replicas survived


def test_health_model_and_docs(client):
    assert client.get("/healthz").json()["status"] == "ok"
    info = client.get("/v1/model").json()
    assert info["stage"] == "sft" and info["n_items"] > 0 and len(info["checkpoint_id"]) == 12
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/v1/recommend"]["post"]
    assert "user_id" in post["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert client.get("/docs").status_code == 200


async def _burst(url: str, bodies: list[dict], timeout: float = 60) -> list[httpx.Response]:
    async with httpx.AsyncClient(
        base_url=url, timeout=timeout, limits=httpx.Limits(max_connections=len(bodies))
    ) as c:
        return await asyncio.gather(*(c.post("/v1/recommend", json=b) for b in bodies))


def test_concurrent_requests_share_batches_and_metrics(served, client, catalogue):
    url, _ = served
    users = list(catalogue.histories)[:6]
    statuses = [r.status_code for r in asyncio.run(_burst(url, [{"user_id": u} for u in users]))]
    assert set(statuses) <= {200, 503}
    text = client.get("/metrics").text
    assert "# TYPE sgrec_request_latency_seconds histogram" in text
    assert 'sgrec_requests_total{endpoint="recommend",status="200"}' in text
    assert 'sgrec_requests_total{endpoint="recommend",status="422"}' in text
    assert 'sgrec_fallbacks_total{reason="unknown_user"}' in text
    singles = float(text.split('sgrec_batch_size_bucket{le="1.0"} ')[1].split()[0])
    total = float(text.split("sgrec_batch_size_count ")[1].split()[0])
    assert total > singles  # some requests shared a beam search


def test_overload_is_a_fast_503_with_retry_after(served, client, catalogue):
    url, _ = served
    users = list(catalogue.histories)
    start = time.perf_counter()
    responses = asyncio.run(_burst(url, [{"user_id": users[i % len(users)]} for i in range(120)]))
    elapsed = time.perf_counter() - start
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    rejected = [r for r in responses if r.status_code == 503]
    assert rejected, "capacity is 6 in flight per replica; 120 at once must overflow"
    assert all(r.headers.get("retry-after") for r in rejected)
    assert 200 in statuses and elapsed < 60
    assert _post(client, {"user_id": users[0]}).status_code == 200  # still serving


def test_hot_reload_under_load_drops_nothing(served, client, catalogue, tiny_run, tmp_path):
    """Swap the checkpoint through user_config while clients keep calling: every request is a 200."""
    url, config = served
    before = client.get("/v1/model").json()
    new_ckpt = str(tmp_path / "ckpt-v2")
    shutil.copytree(before["checkpoint_uri"], new_ckpt)
    (app,) = config["applications"]
    new_app = {
        **app,
        "deployments": [{"name": "Model", "user_config": {**BATCHING, "checkpoint": new_ckpt}}],
    }
    users = list(catalogue.histories)
    seen_ids: set[str] = set()
    stop = asyncio.Event()

    async def caller(c: httpx.AsyncClient, n: int) -> list[int]:
        statuses = []
        while not stop.is_set() or len(statuses) < 3:
            r = await c.post("/v1/recommend", json={"user_id": users[(n + len(statuses)) % 50]})
            statuses.append(r.status_code)
            if r.status_code == 200:
                seen_ids.add(r.json()["model"]["checkpoint_id"])
        return statuses

    async def scenario() -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            callers = [asyncio.create_task(caller(c, n)) for n in range(3)]
            await asyncio.sleep(0.5)
            await asyncio.to_thread(deploy, {**config, "applications": [new_app]})
            for _ in range(300):  # deploy returns when RUNNING; wait until the swap is visible
                if (await c.get("/v1/model")).json()["checkpoint_uri"] == new_ckpt:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            stop.set()
            return [s for result in await asyncio.gather(*callers) for s in result]

    statuses = asyncio.run(scenario())
    after = client.get("/v1/model").json()
    assert after["checkpoint_uri"] == new_ckpt and after["stage"] is None
    assert statuses and set(statuses) == {200}, statuses
    assert after["replica"] == before["replica"]  # reconfigured in place, not restarted
    assert after["checkpoint_id"] != before["checkpoint_id"]
    assert after["checkpoint_id"] in seen_ids  # callers were answered by the new model too
