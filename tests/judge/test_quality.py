"""Judge quality: PairAUC properties, point accuracy, and the report section on a synthetic run."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgrec_ray import storage
from sgrec_ray.judge.aggregate import Aggregator
from sgrec_ray.judge.quality import (
    PLOT_FILE,
    evaluate_pairs,
    pair_auc,
    pair_auc_se,
    point_accuracy,
    render_markdown,
    report_section,
    write_plots,
)
from tests.judge import run_fixture, synthetic


@pytest.fixture
def aggregate_run(tmp_path_factory, ray_session):
    return run_fixture.aggregate_run(tmp_path_factory)


scores = st.lists(
    st.tuples(st.floats(1, 5, allow_nan=False), st.floats(1, 5, allow_nan=False)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(scores)
def test_pair_auc_bounds_and_symmetry(pairs):
    a, b = np.array(pairs).T
    auc = pair_auc(a, b)
    assert 0.0 <= auc <= 1.0
    assert auc + pair_auc(b, a) == pytest.approx(1.0)  # swapping sides mirrors the score
    assert pair_auc(a, a) == 0.5  # all ties


@settings(max_examples=50, deadline=None)
@given(scores)
def test_pair_auc_invariant_to_monotone_transforms(pairs):
    a, b = np.array(pairs).T
    assert pair_auc(np.exp(a), np.exp(b)) == pytest.approx(pair_auc(a, b))


def test_pair_auc_values_and_empty():
    assert pair_auc([3, 2, 1], [1, 2, 3]) == pytest.approx(0.5)  # one right, one tie, one wrong
    assert math.isnan(pair_auc([], []))
    with pytest.raises(ValueError):
        pair_auc([1, 2], [1])
    # credits 1, ½, 0: std (ddof 1) 0.5 over √3 pairs
    assert pair_auc_se([3, 2, 1], [1, 2, 3]) == pytest.approx(0.5 / math.sqrt(3))
    assert math.isnan(pair_auc_se([1], [0]))


def test_point_accuracy_definition():
    # ratings: 5 liked, 4 liked, 3 neutral (left out), 2 disliked, 1 disliked
    out = point_accuracy(
        np.array([4.0, 2.5, 4.9, 3.5, 1.0]), np.array([5, 4, 3, 2, 1]), 4.0, 2.0, scale=5
    )
    assert out["n"] == 4 and out["threshold"] == 3.0
    assert out["point_acc"] == pytest.approx(
        2 / 4
    )  # 5→4.0 right, 4→2.5 wrong, 2→3.5 wrong, 1 right
    assert out["majority_baseline"] == 0.5 and out["balanced_acc"] == pytest.approx(0.5)
    empty = point_accuracy(np.zeros(1), np.array([3.0]), 4.0, 2.0, scale=5)
    assert empty["n"] == 0 and empty["point_acc"] is None


def test_evaluate_pairs_single_aspects_uniform_learned():
    agg = Aggregator.uniform(["profile", "novelty"])
    a_pref = np.array([[5.0, 1.0], [4.0, 2.0]])
    a_other = np.array([[1.0, 3.0], [1.0, 4.0]])
    out = evaluate_pairs(agg, np.ones((2, 1)), a_pref, a_other)
    assert out["pair_auc"] == {"profile": 1.0, "novelty": 0.0, "uniform": 1.0, "learned": 1.0}
    assert out["weights_mean"] == {"profile": 0.5, "novelty": 0.5}
    assert out["pair_auc_se"]["profile"] == 0.0 and set(out["pair_auc_se"]) == set(out["pair_auc"])
    none = evaluate_pairs(agg, np.zeros((0, 1)), np.zeros((0, 2)), np.zeros((0, 2)))
    assert none["pair_auc"]["learned"] is None


@pytest.mark.integration
def test_report_section_markdown_and_plot(aggregate_run):
    ctx, _ = aggregate_run
    section = report_section(ctx)
    assert section is not None
    assert set(section["pair_auc"]) == {*synthetic.ASPECTS, "uniform", "learned"}
    assert {"train", "heldout", "skipped"} <= set(section["pairs"])
    counts = section["counts"]
    assert counts["failed"] == 6 and sum(counts["by_origin"].values()) == counts["rows"]
    assert counts["by_origin"]["target"] == synthetic.N_USERS * synthetic.EVENTS_PER_USER
    assert section["pairs"]["empty_history"]["train"] > 0  # counted, not dropped
    assert "had no earlier event" in render_markdown(section, {})
    assert section["point"]["n"] > 0 and section["point_acc"] is not None
    assert section["examples"] and "title" in section["examples"][0]["preferred"]

    plots = write_plots(ctx)
    assert plots == {"Judge aspect score distributions": PLOT_FILE}
    png = storage.read_bytes(storage.join(ctx.run_uri, PLOT_FILE))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    md = render_markdown(section, plots)
    assert "| learned |" in md and "PointAcc" in md and f"]({PLOT_FILE})" in md


def test_report_section_absent_without_judge(tiny_cfg):
    from sgrec_ray.runs import RunContext

    assert report_section(RunContext(tiny_cfg)) is None


def test_evidence_json_or_text():
    from sgrec_ray.judge.quality import _evidence

    assert _evidence('{"profile": "Likes drama.", "novelty": null}') == {"profile": "Likes drama."}
    assert _evidence("plain words") == {"text": "plain words"}
    assert _evidence(None) is None and _evidence(float("nan")) is None and _evidence(" ") is None


def test_render_markdown_orders_table_and_shows_evidence():
    section = {
        "stage_a": {"pairs_per_s": 3.2, "model": "m", "engine": "transformers"},
        "counts": {"rows": 10, "ok": 9, "failed": 1, "by_origin": {"pair": 6, "target": 4}},
        "aspects": ["profile", "novelty"],
        "pair_auc": {"learned": 0.6, "novelty": 0.5, "profile": 0.55, "uniform": None},
        "pair_auc_se": {"learned": 0.05},
        "pairs": {"train": 5, "heldout": 2, "skipped": 1, "source": "ratings"},
        "examples": [
            {
                "user_id": "1",
                "weights": {"profile": 1.0},
                "preferred": {
                    "title": "A",
                    "aspects": {"profile": 3.0},
                    "holistic": 3.0,
                    "evidence": {"profile": "Likes it."},
                },
                "other": {"title": "B", "aspects": {"profile": 2.0}, "holistic": 2.0},
            }
        ],
    }
    md = render_markdown(section, {})
    table = [line for line in md.splitlines() if line.startswith("| ") and "PairAUC" not in line]
    assert [row.split("|")[1].strip() for row in table] == [
        "profile",
        "novelty",
        "uniform",
        "learned",
    ]
    assert "| uniform | – | – |" in md and "| learned | 0.6000 | 0.0500 |" in md
    assert "3.2 pairs/s" in md and "“Likes it.”" in md
