"""DynamicBatcher: batches form from what queued while the model worked; a lone request never
waits; capacity is a fast Overloaded; a failing batch fails its own requests only. Plus the real
model behind it: a batched answer is each request's answer alone."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sgrec_ray.serving.batcher import DynamicBatcher, Overloaded
from sgrec_ray.serving.replica import ModelReplica
from sgrec_ray.serving.schema import RecommendRequest
from sgrec_ray.serving.sources import resolve_sources


class Gate:
    """A batch function that blocks until released, recording each batch it got."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.started.set()
        self.release.wait(10)
        if -1 in items:
            raise ValueError("bad item")
        return [i * 10 for i in items]


def test_requests_queued_during_a_batch_share_the_next_one():
    gate = Gate()
    batcher = DynamicBatcher(gate, max_batch_size=4)

    async def scenario():
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.to_thread(gate.started.wait, 10)  # batch [0] is running
        rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 7)]
        await asyncio.sleep(0.05)
        gate.release.set()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(scenario())
    assert [r for r, _, _ in results] == [i * 10 for i in range(7)]
    # The lone first request went alone at once; the 6 queued meanwhile filled 4 + 2.
    assert gate.batches == [[0], [1, 2, 3, 4], [5, 6]]
    assert [size for _, _, size in results] == [1, 4, 4, 4, 4, 2, 2]


def test_a_lone_request_starts_at_once_even_with_a_wait():
    gate = Gate()
    gate.release.set()
    batcher = DynamicBatcher(gate, max_batch_size=8, wait_s=0.0)
    (result, queued_ms, size) = asyncio.run(batcher.submit(3))
    assert (result, size) == (30, 1) and queued_ms < 1000


def test_wait_lingers_for_more_requests():
    gate = Gate()
    gate.release.set()
    batcher = DynamicBatcher(gate, max_batch_size=8, wait_s=0.2)

    async def scenario():
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.02)
        second = asyncio.create_task(batcher.submit(2))
        return await asyncio.gather(first, second)

    asyncio.run(scenario())
    assert gate.batches == [[1, 2]]


def test_capacity_is_a_fast_overload_and_errors_stay_in_their_batch():
    gate = Gate()
    batcher = DynamicBatcher(gate, max_batch_size=2, capacity=3)

    async def scenario():
        held = [asyncio.create_task(batcher.submit(i)) for i in (-1, 1, 2)]
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded):
            await batcher.submit(9)
        gate.release.set()
        return await asyncio.gather(*held, return_exceptions=True)

    bad, one, two = asyncio.run(scenario())
    assert isinstance(bad, ValueError) and isinstance(one, ValueError)  # one batch: [-1, 1]
    assert two[0] == 20 and two[2] == 1  # its own batch, answered
    assert batcher.held == 0


def test_batched_answers_equal_single_answers(tiny_run):
    """Through the real model: concurrent requests share forwards and each gets its own answer."""
    sources = resolve_sources(tiny_run.cfg)
    replica = ModelReplica(
        {
            **sources.to_dict(),
            "beam_width": 10,
            "max_history": None,
            "device": "cpu",
            "max_batch_size": 8,
            "batch_wait_timeout_s": 0.0,
        }
    )
    users = list(replica.serving.catalogue.histories)[:12]
    reqs = [RecommendRequest(user_id=u, k=1 + i % 10) for i, u in enumerate(users)]
    reqs.append(RecommendRequest(history=[replica.serving.catalogue.item_ids[3]], k=5))

    async def together():
        return await asyncio.gather(*(replica.recommend(r) for r in reqs))

    batched = asyncio.run(together())
    assert max(o["batch_size"] for o in batched) > 1
    for req, got in zip(reqs, batched, strict=True):
        alone = asyncio.run(replica.recommend(req))
        assert got["status"] == alone["status"] == 200
        want = [i["item_id"] for i in alone["body"]["items"]]
        assert [i["item_id"] for i in got["body"]["items"]] == want
        for a, b in zip(got["body"]["items"], alone["body"]["items"], strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)
        assert {"lookup", "prompt", "beam", "encode", "queue", "model"} <= set(got["spans"])
