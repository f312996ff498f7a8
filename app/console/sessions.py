"""Console sessions: an API key exchanged for an opaque cookie, CSRF tokens, sign-in limits.

A session is a random token (the cookie's value) mapped, in this process's memory, to the API
key's ``Principal``; signing out forgets it. Sessions last ``SESSION_TTL`` and at most
``SESSION_LIMIT`` are kept (the oldest go first). Behind several ``herald serve`` replicas a
browser must stay on one of them (sticky sessions), or sign in on each.

Every form carries a CSRF token: an HMAC, under a secret made when the process starts, of the
cookie that identifies the browser, the session cookie once signed in, before that (the
sign-in form, and every form when auth is off) a random ``herald_console_visit`` cookie. Both
cookies are HttpOnly and SameSite=Strict, and Secure when the request came over HTTPS.

Sign-in attempts are limited per client address (``SIGN_IN_RATE``), whether the key is right
or not. There is no limit over all addresses: one client could then lock every operator out,
and an API key is too long to guess at any rate a server answers.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from app.ratelimit import SlidingWindow
from app.security.auth import Principal

SESSION_COOKIE = "herald_console"
VISIT_COOKIE = "herald_console_visit"
SESSION_TTL = 12 * 3600.0
SESSION_LIMIT = 10_000
SIGN_IN_RATE = (10, 60.0)
"""Sign-in attempts one client address may make per minute."""
ADDRESSES_TRACKED = 10_000


@dataclass(frozen=True, slots=True)
class Session:
    principal: Principal
    expires_at: float


class Sessions:
    """The console's signed-in browsers and its CSRF secret, for one process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._secret = secrets.token_bytes(32)
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._attempts: OrderedDict[str, SlidingWindow] = OrderedDict()

    def open(self, principal: Principal) -> str:
        token = secrets.token_urlsafe(32)
        self._sessions[token] = Session(principal, self._clock() + SESSION_TTL)
        while len(self._sessions) > SESSION_LIMIT:
            self._sessions.popitem(last=False)
        return token

    def find(self, token: str | None) -> Session | None:
        if not token:
            return None
        session = self._sessions.get(token)
        if session is None:
            return None
        if session.expires_at <= self._clock():
            del self._sessions[token]
            return None
        return session

    def close(self, token: str | None) -> None:
        if token:
            self._sessions.pop(token, None)

    def csrf_token(self, basis: str) -> str:
        return hmac.new(self._secret, basis.encode(), hashlib.sha256).hexdigest()

    def csrf_valid(self, basis: str | None, given: str | None) -> bool:
        if not basis or not given:
            return False
        return hmac.compare_digest(self.csrf_token(basis), given)

    def sign_in_wait(self, address: str) -> float | None:
        """Count one sign-in attempt from ``address``: ``None``, or the seconds to wait."""
        window = self._attempts.get(address)
        if window is None:
            window = self._attempts[address] = SlidingWindow(*SIGN_IN_RATE, clock=self._clock)
            while len(self._attempts) > ADDRESSES_TRACKED:
                self._attempts.popitem(last=False)
        return window.try_acquire()


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        max_age=int(SESSION_TTL),
        path="/console",
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


def clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(
        name, path="/console", httponly=True, samesite="strict", secure=is_https(request)
    )
