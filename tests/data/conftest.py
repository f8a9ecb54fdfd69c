"""Data-stage test fixtures: paths of the small hand-written input files, a config factory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
OFFICE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "minionerec-office"


@pytest.fixture
def data_cfg(tiny_cfg):
    """A function giving tiny_cfg with its data section replaced by the given fields."""

    def make(**fields):
        cfg = dataclasses.replace(tiny_cfg)
        cfg.data = dataclasses.replace(tiny_cfg.data, **fields)
        return cfg

    return make
