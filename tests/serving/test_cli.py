"""`sgrec serve` fails fast, before starting Ray, when there is nothing to serve."""

from __future__ import annotations

from sgrec_ray.cli import main
from tests.conftest import REPO


def test_serve_without_a_checkpoint_names_what_to_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SGREC_API_TOKENS", "a-token-of-sixteen-or-more-chars")
    code = main(["serve", str(REPO / "configs" / "tiny.yaml"), "--set", f"run.storage={tmp_path}"])
    assert code == 2
    assert "no generator checkpoint" in capsys.readouterr().err


def test_serve_rejects_unknown_serve_keys(capsys):
    code = main(["serve", str(REPO / "configs" / "tiny.yaml"), "--set", "serve.prot=1"])
    assert code == 2
    assert "serve.prot" in capsys.readouterr().err
