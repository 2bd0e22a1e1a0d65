"""Optional API keys: one per line in a file (a Kubernetes Secret mounted as a file).

Clients send `Authorization: Bearer <key>` (what OpenAI libraries do) or `x-api-key: <key>`.
Only SHA-256 digests of the keys are held in memory and compared; keys are never logged, and
error messages never echo what the client sent. The file is re-read when its modification time
changes (Secret updates replace it in place), checked at most every `recheck_s` seconds. A file
that is gone or holds no key fails closed: no key is valid until it is back.

The admin token (`AdminToken`, the operator's Secret) opens the admin API only; inference keys
never do.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

from block.errors import ConfigError, Forbidden, Unauthorized

logger = logging.getLogger(__name__)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def read_keys(path: Path) -> frozenset[bytes]:
    """Digests of the keys in `path`: one per line, blank lines and `#` comments skipped."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the API key file {path}: {e}") from e
    keys = [ln.strip() for ln in text.splitlines()]
    keys = [k for k in keys if k and not k.startswith("#")]
    if not keys:
        raise ConfigError(f"the API key file {path} holds no key")
    return frozenset(_digest(k) for k in keys)


class ApiKeys:
    def __init__(self, path: Path, recheck_s: float = 5.0) -> None:
        self._path = path
        self._recheck_s = recheck_s
        self._digests: frozenset[bytes] = frozenset()
        self._mtime = -1.0
        self._checked_at = -1e18

    def load(self) -> None:
        """Read the file now; raises `ConfigError` if it is unusable (start-up)."""
        self._mtime = self._path.stat().st_mtime if self._path.exists() else -1.0
        self._digests = read_keys(self._path)
        self._checked_at = time.monotonic()
        logger.info("loaded %d API key(s) from %s", len(self._digests), self._path)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < self._recheck_s:
            return
        self._checked_at = now
        try:
            mtime = self._path.stat().st_mtime
        except OSError:
            mtime = -1.0  # gone (a Secret update swaps the file atomically: this is no update)
        if mtime != self._mtime:
            self._mtime = mtime
            try:
                self._digests = read_keys(self._path)
                logger.info("reloaded %d API key(s) from %s", len(self._digests), self._path)
            except ConfigError as e:
                # Fail closed: keys someone removed must stop working, whatever the cause.
                self._digests = frozenset()
                logger.error("refusing every request until the key file is usable: %s", e.detail)

    def check(self, authorization: str | None, api_key: str | None) -> None:
        """Raise `Unauthorized` unless one of the headers carries a known key."""
        self._refresh()
        key = api_key
        if key is None and authorization is not None:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Unauthorized("the Authorization header must be 'Bearer <API key>'")
            key = value.strip()
        if not key:
            raise Unauthorized(
                "an API key is required: send 'Authorization: Bearer <key>' or 'x-api-key'"
            )
        if _digest(key) not in self._digests:
            raise Unauthorized("the API key is not valid")


class AdminToken:
    """The admin credential: one token in a file, re-read when it changes; fail closed."""

    def __init__(self, path: Path | None, recheck_s: float = 5.0) -> None:
        self._keys = ApiKeys(path, recheck_s) if path is not None else None

    def load(self) -> None:
        if self._keys is not None:
            self._keys.load()

    def check(self, authorization: str | None) -> None:
        """Raise `Unauthorized` (or `Forbidden` when no token is configured at all)."""
        if self._keys is None:
            raise Forbidden(
                "the admin API is off: the gateway was started without --admin-token-file"
            )
        if authorization is None:
            raise Unauthorized("the admin API needs 'Authorization: Bearer <admin token>'")
        self._keys.check(authorization, None)
