"""Bodies of ``POST /v1/recommend``: one pydantic contract for the app, tests and docs.

Validation is strict on purpose: ``"k": "10"``, ``"k": true`` or ``"history": [1.5]`` are client
bugs, and silently coercing them would hide those bugs. Item and user ids may be strings or
integers (MovieLens ids look like numbers) and are compared as strings.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

Id = StrictStr | StrictInt
MAX_ID_CHARS = 256  # longer "ids" are garbage; rejecting them keeps error messages short
MAX_REQUEST_HISTORY = 1000  # serve.max_request_history's default, when no context gives one


def _as_id(value: str | int, what: str) -> str:
    text = str(value)
    if not text or len(text) > MAX_ID_CHARS:
        raise ValueError(f"{what} must be 1..{MAX_ID_CHARS} characters")
    return text


class RecommendRequest(BaseModel):
    """``{"user_id": ...}`` or ``{"history": [ids, oldest first]}``, plus ``k``, ``exclude_seen``.

    With both, the request's history wins (it is fresher than the server's snapshot) and
    ``user_id`` is only echoed. ``k`` defaults and bounds come from the validation context
    (``k_default``, ``k_max``: the serve config), so one model serves every deployment.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: Id | None = None
    history: list[Id] | None = None
    k: StrictInt | None = Field(default=None, validate_default=True)
    exclude_seen: StrictBool = True

    @field_validator("user_id")
    @classmethod
    def _user(cls, v: str | int | None) -> str | None:
        return None if v is None else _as_id(v, "user_id")

    @field_validator("history")
    @classmethod
    def _history(cls, v: list[str | int] | None, info: ValidationInfo) -> list[str] | None:
        if v is None:
            return None
        limit = int((info.context or {}).get("max_history", MAX_REQUEST_HISTORY))
        if len(v) > limit:
            raise ValueError(f"history has {len(v)} items; at most {limit} are accepted")
        return [_as_id(x, "item id") for x in v]

    @field_validator("k")
    @classmethod
    def _k(cls, v: int | None, info: ValidationInfo) -> int:
        ctx = info.context or {}
        k_max = int(ctx.get("k_max", 100))
        k = int(ctx.get("k_default", 10)) if v is None else v
        if not 1 <= k <= k_max:
            raise ValueError(f"k must be between 1 and {k_max}")
        return k

    @model_validator(mode="after")
    def _who(self) -> RecommendRequest:
        if self.user_id is None and self.history is None:
            raise ValueError("give user_id or history (or both)")
        return self


class RecommendedItem(BaseModel):
    item_id: str
    title: str | None
    sid: str  # e.g. <a_3><b_1><c_7><d_0>
    score: (
        float | None
    )  # the generator's ranking score (log p(item | history), or its re-ranking blend); null for popularity


class ModelInfo(BaseModel):
    """Which checkpoint answered: enough to tell two deployments (or a hot swap) apart."""

    checkpoint_id: str
    checkpoint_uri: str
    stage: str | None  # the run stage that wrote it (sft, a2po), when resolved from a run
    epoch: int
    step: int
    n_items: int
    max_history: int
    loaded_at: str


class RecommendResponse(BaseModel):
    items: list[RecommendedItem]
    model: ModelInfo
    fallback: Literal["popularity"] | None = None
    fallback_reason: Literal["unknown_user", "empty_history"] | None = None
    user_id: str | None = None
    history_source: Literal["request", "user", "none"]
    history_used: int  # items the generator read
    history_truncated: bool  # the history was longer than max_history; the oldest were dropped
    excluded: int  # seen items kept out of the results


class ErrorResponse(BaseModel):
    # A stable code: invalid_json, invalid_request, unknown_items, too_large, overloaded, ...
    error: str
    detail: str
    errors: list[dict[str, Any]] | None = None  # pydantic's error list for invalid_request
    unknown_item_ids: list[str] | None = None
    request_id: str | None = None  # internal errors: quote it to find the logged stack trace


class RequestError(Exception):
    """A client error with its HTTP status and body; raised by validation, never a 5xx."""

    def __init__(self, status: int, body: ErrorResponse) -> None:
        super().__init__(body.detail)
        self.status = status
        self.body = body


def parse_request(
    raw: bytes, k_default: int, k_max: int, max_history: int = MAX_REQUEST_HISTORY
) -> RecommendRequest:
    """Parse and validate a body; raise :class:`RequestError` (400 bad JSON, 422 invalid)."""
    context = {"k_default": k_default, "k_max": k_max, "max_history": max_history}
    try:
        return RecommendRequest.model_validate_json(raw, context=context)
    except ValidationError as err:
        raise _invalid(err) from None


QUERY_KEYS = ("user_id", "k", "exclude_seen")


def parse_query(params: list[tuple[str, str]], k_default: int, k_max: int) -> RecommendRequest:
    """A ``GET /v1/recommend?user_id=…&k=…&exclude_seen=…`` query as a request (422 if invalid).

    Why a GET form: through Ray Serve's HTTP proxy a POST body reaches the replica by a call back
    to the proxy actor, one more round trip per request; a by-user lookup fits in the URL.
    Values are parsed as strictly as the JSON body's: ``k`` digits only, ``exclude_seen``
    ``true``/``false``, each key once, no other keys.
    """
    names = [name for name, _ in params]
    problems = [f"{n}: unknown query parameter" for n in names if n not in QUERY_KEYS]
    problems += [f"{n}: given more than once" for n in set(names) if names.count(n) > 1]
    values: dict[str, Any] = dict(params)
    if "k" in values:
        if not values["k"].isdigit():
            problems.append("k: must be an integer")
        else:
            values["k"] = int(values["k"])
    if "exclude_seen" in values:
        flag = values["exclude_seen"].lower()
        if flag not in ("true", "false"):
            problems.append("exclude_seen: must be true or false")
        values["exclude_seen"] = flag == "true"
    if "user_id" not in values:
        problems.append("user_id: required (a history goes in a POST body)")
    if problems:
        detail = "; ".join(problems)
        raise RequestError(422, ErrorResponse(error="invalid_request", detail=detail))
    context = {"k_default": k_default, "k_max": k_max}
    try:
        return RecommendRequest.model_validate(values, context=context)
    except ValidationError as err:
        raise _invalid(err) from None


def _invalid(err: ValidationError) -> RequestError:
    """The client error of a failed validation: 400 bad JSON, 422 otherwise."""
    # Inputs are left out of the echoed errors: they can be large and are the client's anyway.
    errors = err.errors(include_url=False, include_context=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return RequestError(400, ErrorResponse(error="invalid_json", detail=errors[0]["msg"]))
    if any(e["type"] == "model_type" for e in errors):
        detail = "the body must be a JSON object"
        return RequestError(422, ErrorResponse(error="invalid_request", detail=detail))
    detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors)
    return RequestError(422, ErrorResponse(error="invalid_request", detail=detail, errors=errors))
