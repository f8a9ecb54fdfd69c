"""Inputs and outputs by s3:// URI (moto's S3 server, no Ray): the loaders go through storage."""

from __future__ import annotations

import pytest

from sgrec_ray import storage
from sgrec_ray.config import ColumnMap
from sgrec_ray.data import schema
from sgrec_ray.data.stage import run
from sgrec_ray.runs import RunContext
from tests.conftest import S3_BUCKET

from .conftest import FIXTURES

pytestmark = pytest.mark.s3


def test_generic_and_minionerec_from_s3(s3_server, data_cfg):
    base = f"s3://{S3_BUCKET}/inputs"
    for folder in ("generic", "minionerec"):
        for path in (FIXTURES / folder).rglob("*"):
            if path.is_file():
                rel = path.relative_to(FIXTURES).as_posix()
                storage.write_bytes(f"{base}/{rel}", path.read_bytes())
    cfg = data_cfg(
        source="generic",
        path=f"{base}/generic/events.csv",
        items_path=f"{base}/generic/items.csv",
        users_path=f"{base}/generic/users.csv",
        columns=ColumnMap(user_id="uid", item_id="iid", timestamp="when", rating="stars"),
        item_text_fields=["title", "description"],
        max_users=None,
    )
    cfg.run.storage = f"s3://{S3_BUCKET}/runs"
    result = run(RunContext(cfg))
    assert result.outputs["test"] == f"s3://{S3_BUCKET}/runs/tiny/data/{schema.TEST_FILE}"
    assert storage.read_table(result.outputs["test"]).num_rows == 3
    assert result.metrics["interactions"] == 10

    cfg.data.source, cfg.data.path = "minionerec", f"{base}/minionerec"
    cfg.data.item_text_fields = ["title"]
    result = run(RunContext(cfg))
    assert storage.read_table(result.outputs["sid_codes"]).num_rows == 6
