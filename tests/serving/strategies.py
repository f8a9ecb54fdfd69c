"""Hypothesis strategies for request bodies, shared by the HTTP and the in-process fuzz tests."""

from __future__ import annotations

import json

from hypothesis import strategies as st

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def bodies(draw, item_ids: list[str]) -> bytes:
    """Mostly plausible requests with wrong parts, sometimes raw garbage."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=64))
    keys = draw(st.sets(st.sampled_from(["user_id", "history", "k", "exclude_seen", "x"])))
    real_id = st.sampled_from(item_ids)
    value = {
        "user_id": st.one_of(st.text(max_size=6), st.integers(0, 2000), JSON),
        "history": st.one_of(
            st.lists(st.one_of(real_id, st.integers(-5, 2000)), max_size=30),
            st.lists(real_id, min_size=490, max_size=510),  # around serve.max_request_history
            JSON,
        ),
        "k": st.one_of(st.integers(-3, 60), JSON),
        "exclude_seen": st.one_of(st.booleans(), JSON),
        "x": st.one_of(JSON, st.floats()),  # NaN and infinities as JSON extensions
    }
    return json.dumps({key: draw(value[key]) for key in keys}).encode()
