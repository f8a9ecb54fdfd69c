"""Report figures: headless matplotlib (no display on a Ray worker or CI), PNG to any storage URI."""

from __future__ import annotations

import io
from typing import Any

from sgrec_ray import storage


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, imported only when a report draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, uri: str, dpi: int = 100) -> None:
    """Write ``fig`` as PNG to ``uri`` (local, file:// or s3://) and free it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    storage.write_bytes(uri, buf.getvalue())
