"""Answering requests: resolve each against the catalogue, then one beam search for the batch.

No Ray here: the Serve deployment (serve_apps/recommender.py) calls :meth:`ServingModel.answer` from
its ``@serve.batch`` method, and tests and the benchmark call it directly.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from dataclasses import dataclass

from sgrec_ray.eval.popularity import recommend_popular
from sgrec_ray.generator.decode import Recommender
from sgrec_ray.serving.catalogue import Catalogue, check_compatible, load_catalogue
from sgrec_ray.serving.schema import (
    ErrorResponse,
    ModelInfo,
    RecommendedItem,
    RecommendRequest,
    RecommendResponse,
    RequestError,
)
from sgrec_ray.serving.sources import Sources
from sgrec_ray.spans import Spans

MAX_NAMED_UNKNOWN = 20  # unknown ids echoed in a 422; the count is always exact


@dataclass
class Query:
    """A request resolved to item indices: what the model reads and what it must leave out."""

    request: RecommendRequest
    history: list[int]  # item_idx oldest first, already cut to max_history
    exclude: set[int]  # every seen item (untruncated) when exclude_seen, else empty
    history_source: str  # request | user | none
    truncated: bool
    fallback_reason: str | None  # unknown_user | empty_history: answered by popularity


def checkpoint_id(uri: str, meta_json: str) -> str:
    """A short stable id of a checkpoint: its URI plus its metadata (epoch, step, sizes)."""
    return hashlib.sha256(f"{uri}\n{meta_json}".encode()).hexdigest()[:12]


class ServingModel:
    """A loaded checkpoint checked against its catalogue; immutable once built, so hot swaps can
    replace the whole object while requests still hold the old one."""

    def __init__(
        self, recommender: Recommender, catalogue: Catalogue, info: ModelInfo, max_history: int
    ) -> None:
        self.rec = recommender
        self.catalogue = catalogue
        self.info = info
        self.max_history = max_history

    @classmethod
    def load(
        cls,
        sources: Sources,
        beam_width: int = 20,
        device: str = "cpu",
        max_history: int | None = None,
        catalogue: Catalogue | None = None,
        history_cache: str | None = None,
        lean: bool = True,
    ) -> ServingModel:
        """Load checkpoint and catalogue (reusing ``catalogue`` if given); raise on any mismatch.

        ``history_cache``: the node-local folder of the mapped history store (None: the default).
        ``lean``: decode through ``generator.lean`` (False: the Hugging Face forward).
        """
        catalogue = catalogue or load_catalogue(sources.data, sources.sid, history_cache)
        rec = Recommender.load(sources.checkpoint, beam_width=beam_width, device=device, lean=lean)
        check_compatible(catalogue, rec.generator, sources.checkpoint)
        meta = rec.generator.meta
        info = ModelInfo(
            checkpoint_id=checkpoint_id(sources.checkpoint, meta.to_json()),
            checkpoint_uri=sources.checkpoint,
            stage=sources.stage,
            epoch=meta.epoch,
            step=meta.step,
            n_items=catalogue.n_items,
            max_history=meta.max_history,
            loaded_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        cap = meta.max_history if max_history is None else min(max_history, meta.max_history)
        return cls(rec, catalogue, info, cap)

    def resolve(self, req: RecommendRequest) -> Query:
        """Map ids to item indices; unknown item ids are a 422 naming them (never a guess)."""
        cat = self.catalogue
        if req.history is not None:
            unknown = [i for i in dict.fromkeys(req.history) if i not in cat.index]
            if unknown:
                raise RequestError(
                    422,
                    ErrorResponse(
                        error="unknown_items",
                        detail=f"{len(unknown)} unknown item id(s): {unknown[:MAX_NAMED_UNKNOWN]}",
                        unknown_item_ids=unknown[:MAX_NAMED_UNKNOWN],
                    ),
                )
            full = [cat.index[i] for i in req.history]
            source = "request"
        elif req.user_id in cat.histories:
            full = cat.histories[req.user_id].tolist()
            source = "user"
        else:
            full, source = [], "none"
        history = full[-self.max_history :] if self.max_history > 0 else []
        reason = None
        if not history:
            reason = "unknown_user" if source == "none" else "empty_history"
        return Query(
            request=req,
            history=history,
            exclude=set(full) if req.exclude_seen else set(),
            history_source=source,
            truncated=len(history) < len(full),
            fallback_reason=reason,
        )

    def probe(self) -> RecommendResponse:
        """Decode one tiny request (the most popular item as history, k=1) end to end.

        A health check that only asks "is a model object there" passes for a replica whose model
        cannot decode (a broken swap, a corrupted tensor); this one runs the real path.
        """
        item = self.catalogue.item_ids[int(self.catalogue.popularity[0])]
        req = RecommendRequest(history=[item], k=1, exclude_seen=False)
        (answer,) = self.answer([self.resolve(req)])
        if len(answer.items) != 1 or answer.fallback is not None:
            raise RuntimeError(f"health probe: expected one generated item, got {answer}")
        return answer

    def answer(self, queries: list[Query], spans: Spans | None = None) -> list[RecommendResponse]:
        """Responses in query order; generator queries of equal beam width share one search.

        ``spans`` gets the decode's milliseconds (``Recommender.recommend``) and ``encode``.
        """
        spans = spans if spans is not None else Spans()
        ranked: list[list[tuple[int, float | None]]] = [[] for _ in queries]
        groups: dict[int, list[int]] = defaultdict(list)
        for i, q in enumerate(queries):
            if q.fallback_reason is None:
                groups[max(self.rec.beam_width, q.request.k)].append(i)
            else:
                (top,) = recommend_popular(
                    self.catalogue.popularity, q.request.k, [q.exclude], n_users=1
                )
                ranked[i] = [(item, None) for item in top]
        for width, members in groups.items():
            k = max(queries[i].request.k for i in members)
            excludes = [queries[i].exclude for i in members]
            found = self.rec.recommend(
                [queries[i].history for i in members],
                k=k,
                exclude=excludes if any(excludes) else None,
                beam_width=width,
                spans=spans,
            )
            for i, items in zip(members, found, strict=True):
                # Leaves are ranked over all beams with top-k, so a smaller k is an exact prefix.
                ranked[i] = list(items[: queries[i].request.k])
        with spans("encode"):
            return [self._response(q, r) for q, r in zip(queries, ranked, strict=True)]

    def _response(self, q: Query, ranked: list[tuple[int, float | None]]) -> RecommendResponse:
        cat = self.catalogue
        return RecommendResponse(
            items=[
                RecommendedItem(
                    item_id=cat.item_ids[i], title=cat.titles[i], sid=cat.sids[i], score=score
                )
                for i, score in ranked
            ],
            model=self.info,
            fallback="popularity" if q.fallback_reason else None,
            fallback_reason=q.fallback_reason,  # type: ignore[arg-type]
            user_id=q.request.user_id,
            history_source=q.history_source,  # type: ignore[arg-type]
            history_used=len(q.history),
            history_truncated=q.truncated,
            excluded=len(q.exclude),
        )
