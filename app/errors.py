"""Errors that reach an API caller, each carrying its HTTP status and problem type.

::

    HeraldError                      500  internal
    ├── Unauthorized                 401  unauthorized       (WWW-Authenticate: Bearer)
    ├── Unsigned                     401  unsigned           (an inbound callback without its
    │                                                         provider's signature)
    ├── Forbidden                    403  forbidden
    │   ├── MissingScope             (the API key lacks the scope the operation needs)
    │   └── BadSignature             403  bad-signature      (forged, altered or stale)
    ├── NotFound                     404  not-found
    │   └── NotificationNotFound
    │       └── NotificationPurged   404  purged     (retention deleted it)
    ├── Conflict                     409  conflict
    │   ├── InvalidTransition
    │   └── AlreadyAcknowledged      409  already-acknowledged
    ├── UnsupportedMediaType         415  unsupported-media-type
    ├── Unprocessable                422  validation
    │   ├── UnknownName              (route or channel that is not configured)
    │   └── IdempotencyMismatch      (same key, different body)
    └── TooManyRequests              429  rate-limited       (Retry-After)

Rendered as RFC 9457 ``application/problem+json`` by ``app.api.problems``, with the error's
``headers`` on the response. 413 (a body over the limit, ``app.api.middleware``) and 503 (the
database unreachable: ``app.api.problems``, ``/readyz``) are answered as problems directly, never
raised. ``ConfigError`` is not among them: a broken config file stops start-up, it never reaches
a caller.
"""

from __future__ import annotations

from typing import Any, ClassVar


class HeraldError(Exception):
    """Something went wrong on our side."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal server error"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}


def problem_type(slug: str) -> str:
    """The problem ``type`` URI for a slug; stable, so clients can match on it."""
    return f"urn:herald:problem:{slug}"


REALM = "herald"


class Unauthorized(HeraldError):
    """No API key, or one that is not configured.

    ``invalid`` marks a key that was given but matched none (RFC 6750 ``invalid_token``).
    """

    status = 401
    slug = "unauthorized"
    title = "Unauthorized"

    def __init__(self, detail: str, *, invalid: bool = False) -> None:
        challenge = f'Bearer realm="{REALM}"'
        if invalid:
            challenge += ', error="invalid_token"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class Forbidden(HeraldError):
    """The caller is known but may not do this."""

    status = 403
    slug = "forbidden"
    title = "Forbidden"


class MissingScope(Forbidden):
    """The API key lacks the scope the operation needs (RFC 6750 ``insufficient_scope``)."""

    def __init__(self, key_name: str, scope: str, *, action: str | None = None) -> None:
        needs = f"{action} needs" if action else "this operation needs"
        super().__init__(
            f"{needs} the {scope!r} scope, which API key {key_name!r} does not have",
            headers={
                "WWW-Authenticate": (
                    f'Bearer realm="{REALM}", error="insufficient_scope", scope="{scope}"'
                )
            },
        )
        self.scope = scope


class Unsigned(HeraldError):
    """An inbound callback (``/v1/inbound/…``) without its provider's signature."""

    status = 401
    slug = "unsigned"
    title = "Unsigned"


class BadSignature(Forbidden):
    """An inbound callback or a link whose signature is wrong, or that is stale (expired, or
    older than its provider ever retries)."""

    slug = "bad-signature"
    title = "Bad signature"


class NotFound(HeraldError):
    """No such resource."""

    status = 404
    slug = "not-found"
    title = "Not found"


class NotificationNotFound(NotFound):
    """No notification with that id (or none the caller may see)."""

    def __init__(self, notification_id: object) -> None:
        super().__init__(f"no notification with id {notification_id}")


class TemplateNotFound(NotFound):
    """No template of that name in the config."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no template named {name!r}")


class NotificationPurged(NotificationNotFound):
    """The notification existed, and retention purged it once its period was over."""

    slug = "purged"
    title = "Not found: purged by retention"

    def __init__(self, notification_id: object) -> None:
        HeraldError.__init__(
            self,
            f"notification {notification_id} was purged: it had been finished for longer "
            "than its route's retention period",
        )


class Conflict(HeraldError):
    """The resource is not in a state that allows the operation."""

    status = 409
    slug = "conflict"
    title = "Conflict"


class InvalidTransition(Conflict):
    """Cancel or retry asked of a notification whose status does not allow it."""

    def __init__(self, action: str, status: str, allowed: tuple[str, ...]) -> None:
        super().__init__(
            f"cannot {action} a notification that is {status}; "
            f"{action} applies only to {' or '.join(allowed)} notifications"
        )


class AlreadyAcknowledged(Conflict):
    """Someone acknowledged the notification first."""

    slug = "already-acknowledged"
    title = "Already acknowledged"

    def __init__(self, by: str | None, via: str | None, at: object) -> None:
        super().__init__(f"already acknowledged by {by!r} via {via} at {at}")


class UnsupportedMediaType(HeraldError):
    """The request body is not of a media type the operation reads (it reads JSON)."""

    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class Unprocessable(HeraldError):
    """The request is well-formed but its content is not acceptable."""

    status = 422
    slug = "validation"
    title = "Validation failed"


class UnknownName(Unprocessable):
    """The request names a route or channel that the config does not define."""

    def __init__(self, kind: str, names: list[str], loc: list[str | int]) -> None:
        listed = ", ".join(repr(n) for n in names)
        super().__init__(
            f"unknown {kind}{'s' if len(names) > 1 else ''}: {listed}",
            errors=[{"loc": loc, "msg": f"unknown {kind} {name!r}"} for name in names],
        )


class IdempotencyMismatch(Unprocessable):
    """The Idempotency-Key was used before with a different request body."""

    slug = "idempotency-mismatch"
    title = "Idempotency key reused with a different body"

    def __init__(self) -> None:
        super().__init__(
            "this Idempotency-Key was already used with a different request body; "
            "use a new key for a different notification"
        )


class TooManyRequests(HeraldError):
    """The API key has used up its request rate; ``Retry-After`` says when to come back."""

    status = 429
    slug = "rate-limited"
    title = "Too many requests"

    def __init__(self, key_name: str, limit: str, retry_after: int) -> None:
        super().__init__(
            f"API key {key_name!r} is over its rate limit of {limit}; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )
        self.retry_after = retry_after
