"""Bearer tokens without Ray: sources, rotation, constant-time checks, the demo exception, and
`sgrec serve` refusing to start open. The HTTP cases (401s, WWW-Authenticate, open /healthz)
run against the real endpoint in test_app.py."""

from __future__ import annotations

import os

import pytest

from sgrec_ray.cli import main
from sgrec_ray.serving.auth import AuthConfigError, TokenStore, challenge, demo_without_auth
from tests.conftest import REPO

A, B = "a" * 16 + "-token-one", "b" * 16 + "-token-two"


def test_env_tokens_several_at_once(monkeypatch):
    monkeypatch.setenv("SGREC_TEST_TOKENS", f"{A}, {B}")
    store = TokenStore.load("SGREC_TEST_TOKENS", None)
    assert store.allows(f"Bearer {A}") and store.allows(f"bearer {B}")
    assert store.allows(f"Bearer {A[:-1]}") is False
    assert store.allows("Bearer") is False and store.allows(f"Token {A}") is False
    assert store.allows(None) is None and store.allows("") is None
    assert store.allows("Bearer \udcff\x00é") is False  # odd bytes: a 401, not a TypeError


def test_file_tokens_reload_when_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.delenv("SGREC_TEST_TOKENS", raising=False)
    path = tmp_path / "tokens"
    path.write_text(f"# comment line\n{A}\n")
    store = TokenStore.load("SGREC_TEST_TOKENS", str(path))
    assert store.allows(f"Bearer {A}") and not store.allows(f"Bearer {B}")
    path.write_text(f"{B}\n")
    os.utime(path, (1e9, 1e9))  # a different mtime, as a Secret update gives
    assert store.allows(f"Bearer {B}") and not store.allows(f"Bearer {A}")
    path.write_text("short\n")  # a broken rotation keeps the last good tokens
    os.utime(path, (2e9, 2e9))
    assert store.allows(f"Bearer {B}")


@pytest.mark.parametrize(
    ("env", "file_text", "message"),
    [
        ("", None, "no token was found in .SGREC_TEST_TOKENS"),
        ("tooshort", None, "shorter than 16 characters"),
        ("", "", "no token was found"),
    ],
)
def test_missing_or_weak_tokens_are_refused(tmp_path, monkeypatch, env, file_text, message):
    monkeypatch.setenv("SGREC_TEST_TOKENS", env)
    file = None
    if file_text is not None:
        file = str(tmp_path / "tokens")
        (tmp_path / "tokens").write_text(file_text)
    with pytest.raises(AuthConfigError, match=message):
        TokenStore.load("SGREC_TEST_TOKENS", file)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(AuthConfigError, match="not found"):
        TokenStore.load("SGREC_TEST_TOKENS_UNSET", str(tmp_path / "nope"))


def test_challenge_headers():
    assert challenge(None) == {"WWW-Authenticate": 'Bearer realm="sgrec"'}
    assert 'error="invalid_token"' in challenge(False)["WWW-Authenticate"]


@pytest.mark.parametrize(
    ("demo", "host", "env", "file", "open_"),
    [
        (True, "127.0.0.1", "", None, True),
        (True, "localhost", "", None, True),
        (True, "0.0.0.0", "", None, False),  # a demo on every interface still needs tokens
        (False, "127.0.0.1", "", None, False),
        (True, "127.0.0.1", A, None, False),  # tokens configured: the demo uses them
        (True, "127.0.0.1", "", "/run/secrets/tokens", False),
    ],
)
def test_only_a_loopback_demo_without_tokens_runs_open(monkeypatch, demo, host, env, file, open_):
    monkeypatch.setenv("SGREC_TEST_TOKENS", env)
    assert demo_without_auth(demo, host, "SGREC_TEST_TOKENS", file) is open_


def test_serve_without_tokens_fails_before_starting_anything(monkeypatch, capsys):
    monkeypatch.delenv("SGREC_API_TOKENS", raising=False)
    code = main(["serve", str(REPO / "configs" / "tiny.yaml"), "--set", "serve.host=0.0.0.0"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: endpoint authentication is on") and "SGREC_API_TOKENS" in err
