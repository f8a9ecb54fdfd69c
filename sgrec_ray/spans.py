"""Named wall-clock spans of one request (or one batch), and their ``Server-Timing`` form.

Why: "where does a request's time go" must be answered from measurements, not guesses. The
serving path records spans (history lookup, prompt forward, beam steps, re-ranking, response
encoding, queueing, the handle call) and returns them in the standard ``Server-Timing`` response
header, which ``bench/serve.py`` reads back per request. Recording a span costs two
``perf_counter`` calls, so it stays on in production.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class Spans:
    """Durations in milliseconds by name; a name recorded twice adds up."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, (time.perf_counter() - start) * 1e3)

    def add(self, name: str, ms: float) -> None:
        self.ms[name] = self.ms.get(name, 0.0) + ms


def server_timing(ms: dict[str, float]) -> str:
    """``Server-Timing`` header value: ``name;dur=1.234, ...`` (milliseconds)."""
    return ", ".join(f"{name};dur={value:.3f}" for name, value in ms.items())


def parse_server_timing(value: str) -> dict[str, float]:
    """The inverse of :func:`server_timing`; entries without a ``dur`` are skipped."""
    out: dict[str, float] = {}
    for entry in value.split(","):
        name, *params = (p.strip() for p in entry.split(";"))
        for p in params:
            if p.startswith("dur="):
                out[name] = float(p[4:])
    return out
