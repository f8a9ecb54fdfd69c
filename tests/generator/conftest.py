"""Fixtures for generator tests; helpers live in gen_synthetic.py."""

from __future__ import annotations

import numpy as np
import pytest

from tests.generator.gen_synthetic import make_item_tokens


@pytest.fixture
def item_tokens() -> np.ndarray:
    return make_item_tokens(20)
