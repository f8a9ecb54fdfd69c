"""The generator endpoint: a FastAPI ingress and dynamically batched model replicas. No LLM online.

Two layouts, chosen by ``serve.layout`` (same API, auth, metrics, backpressure, hot swap):

* ``split`` (default): ``Ingress`` (cheap, async, ``num_cpus: 0``) in front of ``Model`` replicas
  reached by a handle, so each scales on its own resource (many cheap ingress replicas, GPU model
  replicas), and a model replica that dies costs its requests a JSON 503, never a 500.
* ``single``: one deployment, ``Model``, is the FastAPI ingress *and* holds the model
  (an ``Ingress`` class with a local :class:`ModelReplica`). A request costs the proxy hop only;
  ingress and model scale together. Measured on 2 cores, the handle hop of ``split`` cost a few
  ms per request, a third of the whole (docs/BENCHMARKS.md); a killed replica was also the
  ingress, so a request it held can get Serve's proxy's own 500.

The ingress does bearer-token auth, the body size limit, JSON/pydantic validation, HTTP status
mapping (any unexpected error: a 500 with a request id, the stack in the log) and metrics; a
flood of bad requests costs no model time. The model side (``sgrec_ray.serving.replica``) batches
requests queued while it works into one forward, and ``user_config`` drives ``reconfigure()``: a
new checkpoint is loaded *fully* off the event loop and only then swapped in by one reference
assignment, so in-flight batches finish on the old model and none fails. Every answer carries a
``Server-Timing`` header with where its time went (``bench/serve.py`` reads it).

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
from sgrec_ray.serving.batcher import Overloaded
from sgrec_ray.serving.gateway import Limits, Reply, error, guarded
from sgrec_ray.serving.metrics import CONTENT_TYPE, AppMetrics
from sgrec_ray.serving.replica import ModelReplica
from sgrec_ray.serving.schema import (
    ErrorResponse,
    RecommendRequest,
    RecommendResponse,
    RequestError,
)
from sgrec_ray.serving.sources import Sources, resolve_sources
from sgrec_ray.spans import server_timing

log = logging.getLogger("ray.serve")

# A model replica that died (or was replaced) while holding a request: transient, not a bug. The
# client gets 503 + Retry-After while Serve starts a new replica, never a 500.
REPLICA_GONE = (RayActorError, ReplicaUnavailableError)

api = FastAPI(
    title="sgrec-ray generator",
    version="0.1.0",
    description="Semantic-ID generative recommender (S-GRec). POST /v1/recommend returns top-k "
    "items from trie-constrained beam search over the catalogue; no LLM runs at request time.",
)


@serve.deployment(name="Model")
class Model:
    """The split layout's model replica: one loaded checkpoint, requests batched dynamically."""

    def __init__(self, defaults: dict[str, Any]) -> None:
        self.core = ModelReplica(defaults)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        await self.core.reconfigure(user_config)

    async def recommend(self, request: RecommendRequest) -> dict[str, Any]:
        return await self.core.recommend(request)

    def info(self) -> dict[str, Any]:
        return self.core.info(_replica_id())

    async def probe(self) -> dict[str, Any]:
        """Decode one tiny request; the model info when it works (``/healthz``)."""
        await self.core.probe()
        return self.info()

    async def check_health(self) -> None:
        """Serve's periodic check: decode one tiny request, off the event loop."""
        await self.core.probe()


def _replica_id() -> str:
    return serve.get_replica_context().replica_id.unique_id


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
    """HTTP edge: authentication, validation, status codes, metrics.

    ``model``: the split layout's Model handle; None in the single layout, where this replica
    holds the model itself (``model_defaults``, ``capacity`` requests at most, then 503).
    """

    def __init__(
        self,
        model: DeploymentHandle | None,
        settings: dict[str, Any],
        model_defaults: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.local = (
            ModelReplica(model_defaults or {}, int(settings["capacity"])) if model is None else None
        )
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

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Single layout: the model's hot swap (see ModelReplica.reconfigure)."""
        if self.local is None:
            raise ValueError("user_config belongs to the Model deployment in the split layout")
        await self.local.reconfigure(user_config)

    async def check_health(self) -> None:
        if self.local is not None:  # single layout: Serve's periodic check decodes, as Model's
            await self.local.probe()

    async def _call_model(self, request: RecommendRequest) -> dict[str, Any]:
        if self.local is not None:
            return await self.local.recommend(request)
        assert self.model is not None
        return await self.model.recommend.remote(request)

    async def _model_info(self, probe: bool = False) -> dict[str, Any]:
        if self.local is not None:
            if probe:
                await self.local.probe()
            return self.local.info(_replica_id())
        assert self.model is not None
        return await (self.model.probe if probe else self.model.info).remote()

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
        """Auth, then ``handler()`` guarded (500 + request id), timed and counted.

        The response's ``Server-Timing`` header: the model side's spans, ``handle`` (the model
        call as the ingress saw it) and ``ingress`` (this method, JSON rendering included).
        """
        start = time.perf_counter()

        async def checked() -> Reply:
            return self._denied(request) or await handler()

        reply = await guarded(endpoint, checked, self.metrics.observe_internal_error)
        response = _json(reply)
        elapsed = time.perf_counter() - start
        self.metrics.observe_request(endpoint, reply.status, elapsed)
        response.headers["server-timing"] = server_timing({**reply.spans, "ingress": elapsed * 1e3})
        return response

    @api.post(
        "/v1/recommend",
        response_model=RecommendResponse,
        responses=_ERRORS,
        openapi_extra=_REQUEST_BODY,
        summary="Top-k items for a user id or an item history",
    )
    async def recommend(self, request: Request) -> Response:
        async def posted() -> Reply:
            raw = await self._read_body(request)
            return await gateway.recommend(raw, self.limits, self._timed_call)

        return await self._serve("recommend", request, lambda: self._recommend(posted))

    @api.get(
        "/v1/recommend",
        response_model=RecommendResponse,
        responses=_ERRORS,
        summary="Top-k items for a user id: ?user_id=…&k=…&exclude_seen=… (no body to fetch)",
    )
    async def recommend_by_query(self, request: Request) -> Response:
        params = list(request.query_params.multi_items())

        async def queried() -> Reply:
            return await gateway.recommend_query(params, self.limits, self._timed_call)

        return await self._serve("recommend", request, lambda: self._recommend(queried))

    async def _recommend(self, ask: Any) -> Reply:
        """``ask()`` (parse, then the model call), with overload and a lost replica as 503s."""
        try:
            reply = await ask()
        except RequestError as err:
            return Reply(err.status, err.body.model_dump(exclude_none=True))
        except (BackPressureError, Overloaded):
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

    async def _timed_call(self, request: RecommendRequest) -> dict[str, Any]:
        start = time.perf_counter()
        outcome = await self._call_model(request)
        spans = {**outcome.get("spans", {}), "handle": (time.perf_counter() - start) * 1e3}
        return {**outcome, "spans": spans}

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
            return Reply(200, await self._model_info())

        return await self._serve("model", request, info)

    @api.get("/healthz", summary="200 when a model replica decodes a tiny request (no auth)")
    async def healthz(self) -> Response:
        try:
            info = await asyncio.wait_for(self._model_info(probe=True), timeout=10.0)
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
    """The application for ``cfg.serve`` in its ``layout``: sources resolved here, once.

    ``user_config`` (keys in replica.RELOAD_KEYS, LIVE_KEYS) overrides the build defaults in the
    deployment that holds the model (named ``Model`` in both layouts); redeploying with only it
    changed reconfigures running replicas instead of replacing them.
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
        "lean_decode": s.lean_decode,
    }
    settings = {
        "max_body_bytes": s.max_body_bytes,
        "k_default": s.k_default,
        "k_max": s.k_max,
        "max_request_history": s.max_request_history,
        "retry_after_s": s.retry_after_s,
        "auth": auth,
        "auth_tokens_env": s.auth_tokens_env,
        "auth_tokens_file": s.auth_tokens_file,
        "metrics_auth": s.metrics_auth,
        # Single layout: the replica holds at most this many requests, then answers 503.
        "capacity": s.max_ongoing_requests + s.max_queued_requests,
    }
    model_options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": s.cpus_per_replica, "num_gpus": s.gpus_per_replica},
        "user_config": {"max_batch_size": s.max_batch_size, **(user_config or {})},
        "health_check_period_s": 10,
        "backpressure_config": backpressure,
        **_scaling(s),
    }
    if s.layout == "single":
        # Serve's own queue limit sits above the replica's (2x, as the split ingress's), so the
        # replica's capacity check answers first, with the same JSON 503 as the split layout.
        cap = settings["capacity"]
        return Ingress.options(
            name="Model", max_ongoing_requests=2 * cap, max_queued_requests=2 * cap, **model_options
        ).bind(None, settings, defaults)
    model = Model.options(
        max_ongoing_requests=s.max_ongoing_requests,
        max_queued_requests=s.max_queued_requests,
        **model_options,
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
    return ingress.bind(model, settings)


def build(args: dict[str, Any]) -> serve.Application:
    """Application builder for Serve config files: ``args: {config: ..., overrides: [...]}``."""
    cfg = load_config(args.get("config", "configs/ml100k.yaml"), list(args.get("overrides", [])))
    return build_app(cfg)
