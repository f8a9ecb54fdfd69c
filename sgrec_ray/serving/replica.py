"""What a replica that holds the model does, whichever deployment it sits in.

The two layouts of serve_apps/recommender.py share it: in ``split`` the ``Model`` deployment
wraps one and the ``Ingress`` reaches it through a handle; in ``single`` the ingress replica holds
one itself and calls it in-process (no handle hop). Either way: one loaded :class:`ServingModel`,
a :class:`DynamicBatcher` in front of it, and ``user_config`` hot swaps through
:meth:`ModelReplica.reconfigure`. No Serve API here, so tests drive it in-process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sgrec_ray.serving.batcher import DynamicBatcher
from sgrec_ray.serving.engine import ServingModel
from sgrec_ray.serving.gateway import answer_batch
from sgrec_ray.serving.schema import RecommendRequest
from sgrec_ray.serving.sources import Sources

log = logging.getLogger("ray.serve")

# user_config keys the model accepts; anything else is a typo and fails the update loudly.
RELOAD_KEYS = ("checkpoint", "data", "sid", "stage", "beam_width", "max_history", "device")
LIVE_KEYS = ("max_batch_size", "batch_wait_timeout_s")


def load_serving(settings: dict[str, Any], catalogue: Any = None) -> ServingModel:
    """The ServingModel ``settings`` name (RELOAD_KEYS plus ``history_cache``, ``lean_decode``)."""
    sources = Sources(settings["checkpoint"], settings["data"], settings["sid"], settings["stage"])
    return ServingModel.load(
        sources,
        beam_width=int(settings["beam_width"]),
        device=settings["device"],
        max_history=settings["max_history"],
        catalogue=catalogue,
        history_cache=settings.get("history_cache"),
        lean=bool(settings.get("lean_decode", True)),
    )


class ModelReplica:
    """One loaded checkpoint, dynamically batched; immutable models swapped by one assignment.

    ``defaults``: the build's settings (RELOAD_KEYS, LIVE_KEYS, ``history_cache``,
    ``lean_decode``, ``torch_threads``). ``capacity``: requests held at once before :class:`Overloaded`
    (None: Serve's own ``max_ongoing_requests`` bounds the replica, as in the split layout).
    """

    def __init__(self, defaults: dict[str, Any], capacity: int | None = None) -> None:
        import torch

        defaults = dict(defaults)
        # Intra-op threads = the replica's CPUs: more threads than cores only contend.
        torch.set_num_threads(max(1, int(defaults.pop("torch_threads", 1))))
        self.defaults = defaults
        self.settings = dict(defaults)
        # Cold start: load before the replica reports ready, so a bad checkpoint fails the deploy.
        self.serving = load_serving(self.settings)
        self.batcher: DynamicBatcher[RecommendRequest, dict[str, Any]] = DynamicBatcher(
            self._answer,
            int(defaults["max_batch_size"]),
            float(defaults["batch_wait_timeout_s"]),
            capacity,
        )

    def _answer(self, requests: list[RecommendRequest]) -> list[dict[str, Any]]:
        serving = self.serving  # the whole batch uses one model, even if a swap lands meanwhile
        return answer_batch(serving, requests)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply ``user_config`` over the build defaults; reload only if a model key changed."""
        unknown = sorted(set(user_config) - set(RELOAD_KEYS) - set(LIVE_KEYS))
        if unknown:
            raise ValueError(
                f"unknown user_config keys {unknown}; allowed: {[*RELOAD_KEYS, *LIVE_KEYS]}"
            )
        new = {**self.defaults, **user_config}
        if "checkpoint" in user_config and "stage" not in user_config:
            new["stage"] = None  # a hand-picked URI is not the run stage's output any more
        self.batcher.max_batch_size = max(1, int(new["max_batch_size"]))
        self.batcher.wait_s = max(0.0, float(new["batch_wait_timeout_s"]))
        if any(new[k] != self.settings.get(k) for k in RELOAD_KEYS):
            same_data = (new["data"], new["sid"]) == (self.settings["data"], self.settings["sid"])
            reuse = self.serving.catalogue if same_data else None
            # Load in a thread: batches keep being answered by the old model meanwhile.
            loaded = await asyncio.to_thread(load_serving, new, reuse)
            self.serving = loaded  # the swap: one reference assignment
            log.info("model swapped to %s", loaded.info.checkpoint_uri)
        self.settings = new

    async def recommend(self, request: RecommendRequest) -> dict[str, Any]:
        """The request's outcome (``gateway.answer_batch``) with its ``queue`` and ``model`` ms."""
        start = time.perf_counter()
        outcome, queued_ms, _ = await self.batcher.submit(request)
        spans = {**outcome["spans"], "queue": queued_ms}
        spans["model"] = (time.perf_counter() - start) * 1e3
        return {**outcome, "spans": spans}

    def info(self, replica: str) -> dict[str, Any]:
        return {
            **self.serving.info.model_dump(),
            "max_batch_size": self.batcher.max_batch_size,
            "beam_width": self.settings["beam_width"],
            "replica": replica,
        }

    async def probe(self) -> None:
        """Decode one tiny request off the event loop (``/healthz``, Serve's ``check_health``)."""
        await asyncio.to_thread(self.serving.probe)
