"""Dynamic batching for a model replica: requests that queue while the model works share its
next forward; a request that finds the model idle starts at once.

Why not ``@serve.batch``: measured on 2 cores (docs/BENCHMARKS.md), it made the endpoint slower
under load than no batching. Its loop forms the *next* batch as soon as the current one is
handed off, from whatever is queued at that instant (often one request), and then holds it
until the current batch ends; the requests that arrive during a forward wait for the batch after.
Here the batch is formed when the model becomes free, from everything queued by then (up to
``max_batch_size``), so the queue drains in about one forward whatever the arrival rate.
``wait_s`` > 0 additionally lingers for more arrivals after the first queued request (off by
default; docs/SERVING.md has the measurement). A bounded ``capacity`` turns a full queue into an
immediate :class:`Overloaded` (a 503 upstream) instead of an unbounded wait.

No Ray here: the batch function runs in a worker thread (``asyncio.to_thread``), so the replica's
event loop keeps accepting requests during a forward; tests drive it directly.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Overloaded(Exception):
    """The replica already holds ``capacity`` requests (queued or in a batch)."""


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[tuple[R, float, int]]
    queued_at: float


class DynamicBatcher(Generic[T, R]):
    """``await submit(item)`` -> ``(result, queued_ms, batch_size)``; ``run(items)`` answers a batch.

    ``run`` must return one result per item, in order; if it raises, every request of that batch
    gets the exception. One batch runs at a time (the model owns the replica's CPUs).
    """

    def __init__(
        self,
        run: Callable[[list[T]], list[R]],
        max_batch_size: int = 16,
        wait_s: float = 0.0,
        capacity: int | None = None,
    ) -> None:
        self.run = run
        self.max_batch_size = max(1, int(max_batch_size))
        self.wait_s = max(0.0, float(wait_s))
        self.capacity = capacity
        self._queue: collections.deque[_Pending[T, R]] = collections.deque()
        self._held = 0  # queued + in the running batch
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None

    @property
    def held(self) -> int:
        return self._held

    async def submit(self, item: T) -> tuple[R, float, int]:
        if self.capacity is not None and self._held >= self.capacity:
            raise Overloaded(f"{self._held} requests held (capacity {self.capacity})")
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._loop())
        pending: _Pending[T, R] = _Pending(item, loop.create_future(), time.perf_counter())
        self._queue.append(pending)
        self._held += 1
        assert self._wake is not None
        self._wake.set()
        try:
            return await pending.future
        finally:
            self._held -= 1

    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.wait_s > 0 and len(self._queue) < self.max_batch_size:
                await self._linger()
            batch = [
                self._queue.popleft() for _ in range(min(self.max_batch_size, len(self._queue)))
            ]
            batch = [p for p in batch if not p.future.done()]  # cancelled by its caller
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results: list[Any] = await asyncio.to_thread(self.run, [p.item for p in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch of {len(batch)} got {len(results)} results")
            except Exception as err:  # every request of the batch learns why
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(err)
                continue
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result((result, (started - p.queued_at) * 1e3, len(batch)))

    async def _linger(self) -> None:
        """Wait for more requests until ``wait_s`` after the oldest queued one, or a full batch."""
        assert self._wake is not None
        deadline = self._queue[0].queued_at + self.wait_s
        while len(self._queue) < self.max_batch_size:
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                return
