"""API keys: who is calling, what they may do, and how often.

Keys come from ``auth.api_keys`` in ``herald.yaml``, each as the key itself (``key``, usually
``${VAR}``) or its SHA-256 (``key_sha256``); both are matched as digests. A presented key is
hashed once and compared with *every* configured digest through ``hmac.compare_digest``: the
digests all have the same length, so the time taken depends neither on the length of the
presented key nor on which configured key, if any, it matches.

No keys configured means auth is off: every request is allowed and owns nothing
(``Principal`` is ``None``), and ``herald serve`` binds loopback addresses only.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.config import ApiKeyConfig, AuthConfig, Scope
from app.ratelimit import SlidingWindow


@dataclass(frozen=True, slots=True)
class Principal:
    """The API key a request authenticated with."""

    name: str
    scopes: frozenset[Scope]

    def allows(self, scope: str) -> bool:
        """``admin`` holds every scope."""
        return scope in self.scopes or "admin" in self.scopes

    @property
    def owner_filter(self) -> str | None:
        """Whose notifications this key sees: its own, or (``admin``) everyone's (``None``)."""
        return None if "admin" in self.scopes else self.name


@dataclass(frozen=True, slots=True)
class _Key:
    digest: bytes
    principal: Principal


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def _key_digest(config: ApiKeyConfig) -> bytes:
    if config.key is not None:
        return _digest(config.key.get_secret_value())
    assert config.key_sha256 is not None  # ApiKeyConfig requires exactly one of the two
    return bytes.fromhex(config.key_sha256)


class ApiKeys:
    """The configured keys of one process, with each key name's request window.

    Entries may share a name (a key being rotated: old and new both valid): they are one
    tenant, with one rate window, set by the first of them that has a ``rate_limit``.
    """

    def __init__(self, config: AuthConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._keys = [
            _Key(_key_digest(entry), Principal(entry.name, frozenset(entry.scopes)))
            for entry in config.api_keys
        ]
        self._metrics_digest = (
            _digest(config.metrics_key.get_secret_value()) if config.metrics_key else None
        )
        self._limits: dict[str, tuple[str, SlidingWindow]] = {}
        for entry in config.api_keys:
            rate = entry.rate
            if rate is not None and entry.rate_limit and entry.name not in self._limits:
                self._limits[entry.name] = (entry.rate_limit, SlidingWindow(*rate, clock=clock))

    @property
    def enabled(self) -> bool:
        """Whether requests must carry a key at all."""
        return bool(self._keys)

    @property
    def metrics_protected(self) -> bool:
        return self._metrics_digest is not None

    def authenticate(self, presented: str) -> Principal | None:
        """The key ``presented`` matches, or ``None``; every configured key is compared."""
        digest = _digest(presented)
        found: Principal | None = None
        for key in self._keys:
            if hmac.compare_digest(digest, key.digest) and found is None:
                found = key.principal
        return found

    def is_metrics_key(self, presented: str) -> bool:
        if self._metrics_digest is None:
            return False
        return hmac.compare_digest(_digest(presented), self._metrics_digest)

    def admit(self, principal: Principal) -> tuple[str, int] | None:
        """Count one request; ``(limit, retry_after_seconds)`` when the key is over its limit."""
        limit = self._limits.get(principal.name)
        if limit is None:
            return None
        text, window = limit
        wait = window.try_acquire()
        if wait is None:
            return None
        return text, max(1, math.ceil(wait))
