"""App metrics, recorded twice: a local Prometheus registry rendered by ``GET /metrics``, and Ray's
metrics (``ray.serve.metrics``), which Ray exports cluster-wide with a ``ray_`` prefix next to
Serve's built-in ones.

Why both: ``/metrics`` answers "what is this replica doing" with plain curl on a laptop with no
Prometheus; Ray's export aggregates every replica on a cluster, where a scrape of one ingress
replica's ``/metrics`` would see only its own share of the traffic.
"""

from __future__ import annotations

import logging

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class AppMetrics:
    """Request latency and status, batch sizes and fallbacks, for one ingress replica."""

    def __init__(self, ray_export: bool = True) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "sgrec_request_latency_seconds",
            "End-to-end latency of requests in the ingress replica",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "sgrec_requests",
            "Requests by endpoint and HTTP status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "sgrec_batch_size",
            "Requests answered by one beam search (@serve.batch)",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "sgrec_fallbacks",
            "Requests answered by the popularity fallback",
            ["reason"],
            registry=self.registry,
        )
        self.internal_errors = Counter(
            "sgrec_internal_errors",
            "Unexpected server errors (500s) by endpoint; stacks are in the replica log",
            ["endpoint"],
            registry=self.registry,
        )
        self._ray = _RayMirror() if ray_export else None

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.latency.labels(endpoint).observe(seconds)
        self.requests.labels(endpoint, str(status)).inc()
        if self._ray:
            self._ray.request(endpoint, status, seconds)

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)
        if self._ray:
            self._ray.batch(size)

    def observe_fallback(self, reason: str) -> None:
        self.fallbacks.labels(reason).inc()
        if self._ray:
            self._ray.fallback(reason)

    def observe_internal_error(self, endpoint: str) -> None:
        self.internal_errors.labels(endpoint).inc()
        if self._ray:
            self._ray.internal_error(endpoint)

    def render(self) -> bytes:
        """Prometheus text exposition of this replica's app metrics."""
        return generate_latest(self.registry)


class _RayMirror:
    """The same metrics through ``ray.serve.metrics`` (tagged with deployment/replica by Serve)."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.latency = metrics.Histogram(
            "sgrec_request_latency_s",
            description="End-to-end latency of requests in the ingress",
            boundaries=list(LATENCY_BUCKETS),
            tag_keys=("endpoint",),
        )
        self.requests = metrics.Counter(
            "sgrec_requests",
            description="Requests by endpoint and status",
            tag_keys=("endpoint", "status"),
        )
        self.batch_size = metrics.Histogram(
            "sgrec_batch_size",
            description="Requests per beam search",
            boundaries=list(BATCH_BUCKETS),
        )
        self.fallbacks = metrics.Counter(
            "sgrec_fallbacks", description="Popularity fallbacks", tag_keys=("reason",)
        )
        self.internal_errors = metrics.Counter(
            "sgrec_internal_errors", description="Unexpected 500s", tag_keys=("endpoint",)
        )

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        self.latency.observe(seconds, tags={"endpoint": endpoint})
        self.requests.inc(tags={"endpoint": endpoint, "status": str(status)})

    def batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def fallback(self, reason: str) -> None:
        self.fallbacks.inc(tags={"reason": reason})

    def internal_error(self, endpoint: str) -> None:
        self.internal_errors.inc(tags={"endpoint": endpoint})
