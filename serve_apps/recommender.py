"""The generator endpoint: a FastAPI ingress in front of batched model replicas. No LLM online.

Two deployments, so each scales on its own resource:

* ``Ingress`` (cheap, async): bearer-token auth, body size limit, JSON/pydantic validation,
  HTTP status mapping (any unexpected error: a 500 with a request id, the stack in the log),
  metrics. It never runs the model, so a flood of bad requests costs no model time.
* ``Model`` (CPU/GPU): holds a :class:`ServingModel`; ``@serve.batch`` gathers concurrent requests
  into one constrained beam search. ``user_config`` drives ``reconfigure()``: a new checkpoint is
  loaded *fully* off the event loop and only then swapped in by one reference assignment, so
  in-flight batches finish on the old model and none fails.

Entry points: ``build(args)`` for ``serve run serve_apps/config.yaml`` and RayService
``serveConfigV2`` (args: ``config``, ``overrides``); :func:`build_app` for ``sgrec serve``, tests.
"""

# No `from __future__ import annotations` here: FastAPI resolves the `Request` annotations of the
# ingress methods at runtime, and string annotations break that inside a Serve ingress class.
import asyncio
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.config import BackpressureConfig
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from sgrec_ray.config import Config, ServeSection, load_config
from sgrec_ray.serving import gateway
from sgrec_ray.serving.auth import TokenStore, challenge
from sgrec_ray.serving.engine import ServingModel
from sgrec_ray.serving.gateway import Limits, Reply, answer_batch, error, guarded
from sgrec_ray.serving.metrics import CONTENT_TYPE, AppMetrics
from sgrec_ray.serving.schema import (
    ErrorResponse,
    RecommendRequest,
    RecommendResponse,
    RequestError,
)
from sgrec_ray.serving.sources import Sources, resolve_sources

log = logging.getLogger("ray.serve")

# A model replica that died (or was replaced) while holding a request: transient, not a bug. The
# client gets 503 + Retry-After while Serve starts a new replica, never a 500.
REPLICA_GONE = (RayActorError, ReplicaUnavailableError)

# user_config keys the Model accepts; anything else is a typo and fails the update loudly.
RELOAD_KEYS = ("checkpoint", "data", "sid", "stage", "beam_width", "max_history", "device")
LIVE_KEYS = ("max_batch_size", "batch_wait_timeout_s")

api = FastAPI(
    title="sgrec-ray generator",
    version="0.1.0",
    description="Semantic-ID generative recommender (S-GRec). POST /v1/recommend returns top-k "
    "items from trie-constrained beam search over the catalogue; no LLM runs at request time.",
)


@serve.deployment(name="Model")
class Model:
    """One loaded checkpoint per replica; answers whole batches of requests."""

    def __init__(self, defaults: dict[str, Any]) -> None:
        import torch

        torch.set_num_threads(int(defaults.pop("torch_threads", 1)))
        self.defaults = defaults
        self.settings = dict(defaults)
        # Cold start: load before the replica reports ready, so a bad checkpoint fails the deploy.
        self.serving = _load(self.settings, None)

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
        self.recommend.set_max_batch_size(int(new["max_batch_size"]))
        self.recommend.set_batch_wait_timeout_s(float(new["batch_wait_timeout_s"]))
        if any(new[k] != self.settings.get(k) for k in RELOAD_KEYS):
            same_data = (new["data"], new["sid"]) == (self.settings["data"], self.settings["sid"])
            reuse = self.serving.catalogue if same_data else None
            # Load in a thread: batches keep being answered by the old model meanwhile.
            loaded = await asyncio.to_thread(_load, new, reuse)
            self.serving = loaded  # the swap: one reference assignment
            log.info("model swapped to %s", loaded.info.checkpoint_uri)
        self.settings = new

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def recommend(self, requests: list[RecommendRequest]) -> list[dict[str, Any]]:
        """Resolve each request (errors stay per request), then one beam search for the rest."""
        serving = self.serving  # the whole batch uses one model, even if a swap lands meanwhile
        return await asyncio.to_thread(answer_batch, serving, requests)

    def info(self) -> dict[str, Any]:
        return {
            **self.serving.info.model_dump(),
            "max_batch_size": self.settings["max_batch_size"],
            "beam_width": self.settings["beam_width"],
            "replica": serve.get_replica_context().replica_id.unique_id,
        }

    async def probe(self) -> dict[str, Any]:
        """Decode one tiny request; the model info when it works (``/healthz``)."""
        await asyncio.to_thread(self.serving.probe)
        return self.info()

    async def check_health(self) -> None:
        """Serve's periodic check: decode one tiny request, off the event loop."""
        await asyncio.to_thread(self.serving.probe)


def _load(settings: dict[str, Any], catalogue: Any) -> ServingModel:
    sources = Sources(settings["checkpoint"], settings["data"], settings["sid"], settings["stage"])
    return ServingModel.load(
        sources,
        beam_width=int(settings["beam_width"]),
        device=settings["device"],
        max_history=settings["max_history"],
        catalogue=catalogue,
        history_cache=settings.get("history_cache"),
    )


def _json(reply: Reply) -> Response:
    return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers or None)


_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": RecommendRequest.model_json_schema()}},
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in [
        (400, "malformed JSON"),
        (401, "missing or invalid bearer token (WWW-Authenticate)"),
        (413, "body larger than serve.max_body_bytes"),
        (422, "invalid request, history over serve.max_request_history, or unknown item ids"),
        (500, "unexpected server error: the body carries a request_id, the log the stack"),
        (503, "overloaded (Retry-After)"),
    ]
}


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    """HTTP edge: authentication, validation, status codes, metrics. Holds no model."""

    def __init__(self, model: DeploymentHandle, settings: dict[str, Any]) -> None:
        self.model = model
        self.max_body_bytes = int(settings["max_body_bytes"])
        self.limits = Limits(
            int(settings["k_default"]), int(settings["k_max"]), int(settings["max_request_history"])
        )
        self.retry_after = str(max(1, round(float(settings["retry_after_s"]))))
        self.metrics = AppMetrics()
        self.metrics_open = not settings["metrics_auth"]
        # Raises AuthConfigError when auth is on and no token is found: the deploy fails loudly.
        self.tokens = (
            TokenStore.load(settings["auth_tokens_env"], settings["auth_tokens_file"])
            if settings["auth"]
            else None
        )
        if self.tokens is None:
            log.warning("auth: OFF (sgrec serve --demo on a loopback address); anyone may call")
        else:
            log.info("auth: bearer tokens required (%d valid)", len(self.tokens.tokens()))

    def _denied(self, request: Request) -> Reply | None:
        """A 401 reply unless the request carries a valid bearer token (or auth is off)."""
        if self.tokens is None:
            return None
        allowed = self.tokens.allows(request.headers.get("authorization"))
        if allowed:
            return None
        detail = "missing bearer token" if allowed is None else "invalid bearer token"
        return error(401, "unauthorized", detail, challenge(allowed))

    async def _serve(self, endpoint: str, request: Request, handler: Any) -> Response:
        """Auth, then ``handler()`` guarded (500 + request id), timed and counted."""
        start = time.perf_counter()

        async def checked() -> Reply:
            return self._denied(request) or await handler()

        reply = await guarded(endpoint, checked, self.metrics.observe_internal_error)
        self.metrics.observe_request(endpoint, reply.status, time.perf_counter() - start)
        return _json(reply)

    @api.post(
        "/v1/recommend",
        response_model=RecommendResponse,
        responses=_ERRORS,
        openapi_extra=_REQUEST_BODY,
        summary="Top-k items for a user id or an item history",
    )
    async def recommend(self, request: Request) -> Response:
        return await self._serve("recommend", request, lambda: self._recommend(request))

    async def _recommend(self, request: Request) -> Reply:
        try:
            raw = await self._read_body(request)
            reply = await gateway.recommend(raw, self.limits, self.model.recommend.remote)
        except RequestError as err:
            return Reply(err.status, err.body.model_dump(exclude_none=True))
        except BackPressureError:
            return error(
                503,
                "overloaded",
                "the model replicas are at capacity; retry later",
                {"Retry-After": self.retry_after},
            )
        except REPLICA_GONE as err:
            log.warning("recommend: model replica lost mid-request (%s); answered 503", err)
            return error(
                503,
                "unavailable",
                "a model replica stopped while answering; retry later",
                {"Retry-After": self.retry_after},
            )
        if reply.batch_size is not None:
            self.metrics.observe_batch(reply.batch_size)
            if reply.body.get("fallback_reason"):
                self.metrics.observe_fallback(reply.body["fallback_reason"])
        return reply

    async def _read_body(self, request: Request) -> bytes:
        """The body, or 413 as soon as it passes the limit (by header, or counted for chunked)."""
        too_large = RequestError(
            413,
            ErrorResponse(
                error="too_large", detail=f"request body over {self.max_body_bytes} bytes"
            ),
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    @api.get("/v1/model", summary="The checkpoint a model replica serves", responses=_ERRORS)
    async def model_info(self, request: Request) -> Response:
        async def info() -> Reply:
            return Reply(200, await self.model.info.remote())

        return await self._serve("model", request, info)

    @api.get("/healthz", summary="200 when a model replica decodes a tiny request (no auth)")
    async def healthz(self) -> Response:
        try:
            info = await asyncio.wait_for(self.model.probe.remote(), timeout=10.0)
        except Exception as err:  # any failure to reach a replica means "not healthy"
            return _json(error(503, "unhealthy", f"model not answering: {type(err).__name__}"))
        return JSONResponse({"status": "ok", "checkpoint_id": info["checkpoint_id"]})

    @api.get("/metrics", summary="Prometheus text: this ingress replica's app metrics")
    async def metrics(self, request: Request) -> Response:
        denied = None if self.metrics_open else self._denied(request)
        if denied:
            return _json(denied)
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)


def _scaling(s: ServeSection) -> dict[str, Any]:
    if s.min_replicas == s.max_replicas:
        return {"num_replicas": s.min_replicas}
    return {
        "autoscaling_config": {
            "min_replicas": s.min_replicas,
            "max_replicas": s.max_replicas,
            "target_ongoing_requests": s.target_ongoing_requests,
        }
    }


def build_app(
    cfg: Config,
    sources: Sources | None = None,
    user_config: dict[str, Any] | None = None,
    auth: bool = True,
) -> serve.Application:
    """The application for ``cfg.serve``: sources resolved here, once, into absolute URIs.

    ``user_config`` (keys in RELOAD_KEYS, LIVE_KEYS) overrides the build defaults in the replicas;
    redeploying with only it changed reconfigures running replicas instead of replacing them.
    ``auth=False`` is for ``sgrec serve --demo`` on a loopback address only (the CLI checks that);
    every other path, Serve config files and the RayService included, requires bearer tokens.
    """
    s = cfg.serve
    sources = sources or resolve_sources(cfg)
    backpressure = BackpressureConfig(status_code=503, retry_after_s=s.retry_after_s)
    defaults = {
        **sources.to_dict(),
        "beam_width": s.beam_width,
        "max_history": s.max_history,
        "device": s.device,
        "history_cache": s.history_cache,
        "max_batch_size": s.max_batch_size,
        "batch_wait_timeout_s": s.batch_wait_timeout_s,
        "torch_threads": s.torch_threads,
    }
    model = Model.options(
        max_ongoing_requests=s.max_ongoing_requests,
        max_queued_requests=s.max_queued_requests,
        backpressure_config=backpressure,
        ray_actor_options={"num_cpus": s.cpus_per_replica, "num_gpus": s.gpus_per_replica},
        user_config={"max_batch_size": s.max_batch_size, **(user_config or {})},
        health_check_period_s=10,
        **_scaling(s),
    ).bind(defaults)
    # The ingress only awaits the model, so it may hold every request the model replicas accept;
    # beyond that the model handle raises BackPressureError -> 503 + Retry-After.
    capacity = (s.max_ongoing_requests + s.max_queued_requests) * s.max_replicas
    ingress = Ingress.options(
        max_ongoing_requests=2 * capacity,
        max_queued_requests=2 * capacity,
        backpressure_config=backpressure,
        ray_actor_options={"num_cpus": 0},
    )
    return ingress.bind(
        model,
        {
            "max_body_bytes": s.max_body_bytes,
            "k_default": s.k_default,
            "k_max": s.k_max,
            "max_request_history": s.max_request_history,
            "retry_after_s": s.retry_after_s,
            "auth": auth,
            "auth_tokens_env": s.auth_tokens_env,
            "auth_tokens_file": s.auth_tokens_file,
            "metrics_auth": s.metrics_auth,
        },
    )


def build(args: dict[str, Any]) -> serve.Application:
    """Application builder for Serve config files: ``args: {config: ..., overrides: [...]}``."""
    cfg = load_config(args.get("config", "configs/ml100k.yaml"), list(args.get("overrides", [])))
    return build_app(cfg)
