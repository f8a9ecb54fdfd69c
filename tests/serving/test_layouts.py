"""The single layout (one deployment is ingress and model) against the same contract as the
default, split one in test_app.py: API, auth, metrics, backpressure, hot swap of user_config, the
spans header, and its own replica-kill contract (the dead replica was also the ingress, so a
request it held can get Serve's proxy's own 500)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from sgrec_ray.serving.catalogue import load_catalogue
from sgrec_ray.serving.engine import ServingModel
from sgrec_ray.serving.schema import RecommendRequest
from sgrec_ray.serving.sources import resolve_sources
from sgrec_ray.spans import parse_server_timing
from tests.serving.conftest import TOKENS, bearer, serve_app
from tests.serving.replica_kill import kill_under_load, report


@pytest.fixture(scope="module")
def single(tiny_run, ray_session, tokens_file):
    yield from serve_app(tiny_run, tokens_file, ("serve.layout=single",))


@pytest.fixture(scope="module")
def catalogue(tiny_run):
    return load_catalogue(tiny_run.stage_uri("data"), tiny_run.stage_uri("sid"))


def test_same_answers_auth_and_spans(single, tiny_run, catalogue):
    url, _ = single
    user = next(iter(catalogue.histories))
    assert httpx.post(f"{url}/v1/recommend", json={"user_id": user}).status_code == 401
    wrong = {"authorization": "Bearer " + "x" * 32}
    assert (
        httpx.post(f"{url}/v1/recommend", json={"user_id": user}, headers=wrong).status_code == 401
    )
    r = httpx.post(f"{url}/v1/recommend", json={"user_id": user, "k": 5}, headers=bearer(TOKENS[1]))
    assert r.status_code == 200, r.text
    # The engine in-process (beam 10 as TEST_SERVE) gives the same items.
    engine = ServingModel.load(resolve_sources(tiny_run.cfg), beam_width=10)
    (want,) = engine.answer([engine.resolve(RecommendRequest(user_id=user, k=5))])
    assert [i["item_id"] for i in r.json()["items"]] == [i.item_id for i in want.items]
    spans = parse_server_timing(r.headers["server-timing"])
    assert {"ingress", "handle", "model", "queue", "prompt", "beam", "lookup"} <= set(spans)
    assert spans["ingress"] >= spans["handle"] >= spans["model"] >= spans["prompt"]
    info = httpx.get(f"{url}/v1/model", headers=bearer()).json()
    assert info["stage"] == "sft" and info["beam_width"] == 10
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
    text = httpx.get(f"{url}/metrics", headers=bearer()).text
    assert 'sgrec_requests_total{endpoint="recommend",status="200"}' in text
    assert httpx.get(f"{url}/metrics").status_code == 401


def test_overload_is_a_503_with_retry_after(single, catalogue):
    url, _ = single
    users = list(catalogue.histories)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=url, timeout=60, limits=httpx.Limits(max_connections=120), headers=bearer()
        ) as c:
            return await asyncio.gather(
                *(
                    c.post("/v1/recommend", json={"user_id": users[i % len(users)]})
                    for i in range(120)
                )
            )

    responses = asyncio.run(burst())
    rejected = [r for r in responses if r.status_code == 503]
    assert {r.status_code for r in responses} <= {200, 503} and rejected
    # Past the model's queue: our JSON `overloaded`; past the ingress's own: Serve's proxy 503.
    assert all(r.headers.get("retry-after") for r in rejected)


def test_a_replica_killed_under_load_costs_503s_or_proxy_500s(single, catalogue):
    """The single layout's contract: requests sent while the replica restarts are 503s with
    Retry-After; one the dead replica held when it died is answered by Serve's proxy itself, a
    500 (no body of ours). Never a dropped connection or a 4xx."""
    url, _ = single
    res = kill_under_load(url, next(iter(catalogue.histories)))
    print(report("single", res))
    lost = [s for s in res["statuses"] if s != 200]
    assert set(lost) <= {500, 503}, lost
