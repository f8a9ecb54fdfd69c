"""Bearer-token authentication of the endpoint.

Tokens come from an environment variable and/or a file (a Kubernetes Secret mounted as a volume);
several may be valid at once so a new one can be rolled out before the old one is removed. The
file is re-read when its modification time changes, because Kubernetes updates a mounted Secret
in place: a rotation needs no restart. Comparison is constant time (``hmac.compare_digest``) and
against every token, so response timing says nothing about how much of a guess was right.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
from dataclasses import dataclass, field

from sgrec_ray.errors import UserError

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16  # shorter tokens are guessable; refuse them rather than serve with them
REALM = "sgrec"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class AuthConfigError(UserError, ValueError):
    """Authentication is on but its tokens are missing or unusable; the message says what to set."""


def parse_tokens(text: str, where: str) -> list[str]:
    """Tokens separated by commas, spaces or newlines; ``#`` starts a comment line."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    tokens = [t for t in re.split(r"[\s,]+", "\n".join(lines)) if t]
    short = [t for t in tokens if len(t) < MIN_TOKEN_CHARS]
    if short:
        raise AuthConfigError(
            f"{where}: {len(short)} token(s) shorter than {MIN_TOKEN_CHARS} characters; "
            "use long random tokens, e.g. `openssl rand -hex 32`"
        )
    return tokens


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS


def demo_without_auth(demo: bool, host: str, env_var: str, file: str | None) -> bool:
    """Whether ``sgrec serve`` runs open: only ``--demo``, only on loopback, only with no tokens
    configured (with tokens, the demo uses them). Everything else requires bearer tokens."""
    return demo and is_loopback(host) and not os.environ.get(env_var) and not file


@dataclass
class TokenStore:
    """The valid tokens: those of ``env_var`` plus those of ``file`` (re-read when it changes)."""

    env_var: str
    file: str | None = None
    _env_tokens: list[str] = field(default_factory=list)
    _file_tokens: list[str] = field(default_factory=list)
    _file_mtime: float | None = None

    @classmethod
    def load(cls, env_var: str, file: str | None) -> TokenStore:
        """Read both sources now; raise :class:`AuthConfigError` when no token is found."""
        store = cls(env_var, file)
        store._env_tokens = parse_tokens(os.environ.get(env_var, ""), f"${env_var}")
        store._refresh()
        if not store.tokens():
            where = f"${env_var}" + (f" or {file}" if file else "")
            raise AuthConfigError(
                f"endpoint authentication is on but no token was found in {where}; set "
                f"{env_var}=<token>[,<token>...] or serve.auth_tokens_file (a mounted Secret)"
            )
        return store

    def _refresh(self) -> None:
        if not self.file:
            return
        try:
            mtime = os.stat(self.file).st_mtime
        except OSError:
            if self._file_mtime is None:
                raise AuthConfigError(f"serve.auth_tokens_file {self.file}: not found") from None
            return  # a Secret update swaps a symlink; keep the last tokens for the blink
        if mtime != self._file_mtime:
            with open(self.file) as f:
                self._file_tokens = parse_tokens(f.read(), self.file)
            self._file_mtime = mtime
            log.info("auth: %d token(s) from %s", len(self._file_tokens), self.file)

    def tokens(self) -> list[str]:
        return [*self._env_tokens, *self._file_tokens]

    def allows(self, authorization: str | None) -> bool | None:
        """True for a valid ``Bearer <token>`` header, False for a wrong one, None when absent."""
        if not authorization:
            return None
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return False
        try:
            self._refresh()
        except (OSError, AuthConfigError) as err:  # a bad rotation keeps the previous tokens
            log.error("auth: tokens file not reloaded: %s", err)
        probe = given.strip().encode("utf-8", "surrogateescape")
        # Compare with every token (no early exit), each in constant time.
        matches = [hmac.compare_digest(probe, t.encode()) for t in self.tokens()]
        return any(matches)


def challenge(result: bool | None) -> dict[str, str]:
    """The ``WWW-Authenticate`` header of a 401 (RFC 6750): no token, or an invalid one."""
    if result is None:
        return {"WWW-Authenticate": f'Bearer realm="{REALM}"'}
    return {"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'}
