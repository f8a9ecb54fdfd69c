"""The request path of the endpoint as plain functions: body in, status and JSON out.

Why outside the Serve classes: the same code runs in the ``Ingress``/``Model`` deployments and,
in-process, under a fuzz test that sends thousands of bodies through it (real HTTP on a shared
2-core machine manages a few dozen a second). Serve only adds transport, batching and replicas.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sgrec_ray.serving.engine import ServingModel
from sgrec_ray.serving.schema import (
    ErrorResponse,
    RecommendRequest,
    RequestError,
    parse_query,
    parse_request,
)
from sgrec_ray.spans import Spans

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class Limits:
    """What a request may ask for (serve.k_default, serve.k_max, serve.max_request_history)."""

    k_default: int
    k_max: int
    max_history: int


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    batch_size: int | None = None  # requests that shared this answer's beam search (200 only)
    spans: dict[str, float] = field(default_factory=dict)  # ms, the model side's (spans.Spans)


def error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Reply:
    body = ErrorResponse(error=code, detail=detail).model_dump(exclude_none=True)
    return Reply(status, body, headers or {})


def answer_batch(serving: ServingModel, requests: list[RecommendRequest]) -> list[dict[str, Any]]:
    """Resolve each request (errors stay per request), then one beam search for the rest.

    Returns one outcome per request: ``{"status", "body", "spans"}`` plus ``batch_size`` for a
    200. ``spans`` are this batch's milliseconds (history ``lookup``, ``exclude``, ``prompt``,
    ``rerank``, ``beam``, response ``encode``), shared by its requests.
    """
    spans = Spans()
    outcomes: list[dict[str, Any]] = [{} for _ in requests]
    resolved = []
    with spans("lookup"):
        for i, req in enumerate(requests):
            try:
                resolved.append((i, serving.resolve(req)))
            except RequestError as err:
                body = err.body.model_dump(exclude_none=True)
                outcomes[i] = {"status": err.status, "body": body}
    if resolved:
        answers = serving.answer([q for _, q in resolved], spans)
        with spans("encode"):
            for (i, _), answer in zip(resolved, answers, strict=True):
                outcomes[i] = {
                    "status": 200,
                    "body": answer.model_dump(mode="json"),
                    "batch_size": len(requests),
                }
    for outcome in outcomes:
        outcome["spans"] = spans.ms
    return outcomes


async def recommend(
    raw: bytes,
    limits: Limits,
    call_model: Callable[[RecommendRequest], Awaitable[dict[str, Any]]],
) -> Reply:
    """Validate the body ``raw`` and ask the model; client errors become 4xx replies."""
    return await _ask(
        lambda: parse_request(raw, limits.k_default, limits.k_max, limits.max_history), call_model
    )


async def recommend_query(
    params: list[tuple[str, str]],
    limits: Limits,
    call_model: Callable[[RecommendRequest], Awaitable[dict[str, Any]]],
) -> Reply:
    """The same for ``GET /v1/recommend``'s query parameters (``schema.parse_query``)."""
    return await _ask(lambda: parse_query(params, limits.k_default, limits.k_max), call_model)


async def _ask(
    parse: Callable[[], RecommendRequest],
    call_model: Callable[[RecommendRequest], Awaitable[dict[str, Any]]],
) -> Reply:
    try:
        req = parse()
        outcome = await call_model(req)
    except RequestError as err:
        return Reply(err.status, err.body.model_dump(exclude_none=True))
    return Reply(
        outcome["status"],
        outcome["body"],
        batch_size=outcome.get("batch_size"),
        spans=outcome.get("spans", {}),
    )


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


async def guarded(
    endpoint: str,
    handler: Callable[[], Awaitable[Reply]],
    on_internal_error: Callable[[str], None],
) -> Reply:
    """``handler()``, or a 500 carrying only a request id when it raises anything unexpected.

    The stack trace goes to the log under that id (grep the replica log for it); the client sees
    no exception text, paths or class names. ``on_internal_error(endpoint)`` counts it.
    """
    try:
        return await handler()
    except Exception:
        request_id = new_request_id()
        log.exception("internal error on %s, request_id=%s", endpoint, request_id)
        on_internal_error(endpoint)
        body = ErrorResponse(
            error="internal",
            detail="unexpected server error; quote the request_id when reporting it",
            request_id=request_id,
        ).model_dump(exclude_none=True)
        return Reply(500, body, {"X-Request-ID": request_id})
