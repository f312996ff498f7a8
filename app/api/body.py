"""How the API reads a JSON request body: one reader for ``FastAccept`` and FastAPI's routes.

``read_json`` refuses, in this order:

- a body that is not JSON by its ``Content-Type`` (missing, ``text/plain``, a form …): 415;
  ``application/json`` (any parameters) and ``application/<something>+json`` are JSON;
- a body that is not UTF-8 JSON: 422 saying where, by line and column
  (``invalid JSON at line 3, column 5: Expecting ','``), with ``loc`` ``["body"]``;
- ``NaN``, ``Infinity``, numbers too large for a double (``1e999``) and integers outside 64 bits,
  which Python's ``json`` accepts but JSON does not or nothing could store faithfully: 422;
- a body nested too deeply for the parser (``RecursionError``): 422. Each field's nesting
  limit (``app.nesting``) is the request model's to check, so that the error names the field.

``JSONBodyRoute`` makes FastAPI read bodies with it, so both roads answer alike.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute

from app.errors import Unprocessable, UnsupportedMediaType
from app.nesting import NESTING_LIMIT

JSON_MEDIA_TYPE = "application/json"
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


class _NotJSONNumber(ValueError):
    """A number the JSON grammar or a double cannot hold (raised from inside ``json.loads``)."""


def is_json(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` names JSON: ``application/json`` or ``application/*+json``."""
    media_type = (content_type or "").partition(";")[0].strip().lower()
    main, _, sub = media_type.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def read_json(content_type: str | None, raw: bytes) -> Any:
    """The JSON value of a request body; ``UnsupportedMediaType`` or ``Unprocessable`` if none."""
    if not is_json(content_type):
        given = f"got {content_type!r}" if content_type else "none was given"
        raise UnsupportedMediaType(
            f"the request body must be JSON: send Content-Type: {JSON_MEDIA_TYPE} ({given})"
        )
    return parse_json(raw)


def parse_json(raw: bytes) -> Any:
    """``raw`` parsed as strict UTF-8 JSON (a leading BOM is allowed).

    orjson reads it first, being faster
    (bench/results/levers.md, "request bodies read by orjson first"). It refuses what the
    rules above refuse (invalid UTF-8, ``NaN``, ``1e999``), except integers past 64 bits,
    which it reads (as unsigned 64-bit integers, or as floats): a body with a run of 19 or
    more digits anywhere skips it (found faster by ``translate`` than by a regex). What
    orjson refuses, or skips, ``json`` with strict hooks reads again and says why, with the
    line and column; a test pins the two readers to the same answers. One difference is left:
    orjson reads nesting up to 1,024 levels, ``json`` gives out near 1,000
    (``RecursionError``); every field's nesting limit refuses such a body all the same.
    """
    if _LONG_NUMBER not in raw.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return parse_json_strictly(raw)


def parse_json_strictly(raw: bytes) -> Any:
    """``parse_json`` by ``json`` alone, its error saying where and why."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line, column = _line_column(raw, exc.start)
        raise _invalid(f"invalid JSON at line {line}, column {column}: not UTF-8") from None
    return _parsed(text)


def parse_json_text(text: str) -> Any:
    """``text``, decoded already (a stream entry's field), parsed as ``parse_json`` parses its
    UTF-8: encoded again for orjson, which reads bytes faster than ``json`` reads the text; a
    field that was not UTF-8 (its bytes kept as surrogates) is read by ``json``."""
    try:
        raw = text.encode()
    except UnicodeEncodeError:
        return _parsed(text[1:] if text.startswith("\ufeff") else text)
    return parse_json(raw)


def _parsed(text: str) -> Any:
    """``text`` (its BOM, if any, gone) parsed as strict JSON."""
    try:
        if text.startswith("\ufeff"):  # a second BOM: json.loads refuses it by name
            return json.loads(text)
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise _invalid(f"invalid JSON at {where}: {exc.msg}") from None
    except _NotJSONNumber as exc:
        raise _invalid(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise _invalid(
            f"nested too deeply to parse (a field may nest {NESTING_LIMIT} levels at most)"
        ) from None


def body_hash(body: Any) -> str:
    """SHA-256 of a JSON body in canonical form: key order and whitespace do not count. What an
    ``Idempotency-Key`` remembers of its request, to tell a replay from another body."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _invalid(message: str) -> Unprocessable:
    return Unprocessable(
        f"invalid request: body: {message}", errors=[{"loc": ["body"], "msg": message}]
    )


def _line_column(raw: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column (in bytes) of ``offset`` in ``raw``."""
    line_start = raw.rfind(b"\n", 0, offset) + 1
    return raw.count(b"\n", 0, offset) + 1, offset - line_start + 1


def _refuse_constant(name: str) -> Any:
    raise _NotJSONNumber(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJSONNumber(f"{text} is too large a number")
    return value


INT64 = range(-(2**63), 2**63)


def _int64(text: str) -> int:
    # More than 19 digits is outside 64 bits whatever they are; int() of a few thousand digits
    # is refused by Python itself (ValueError, not a JSONDecodeError).
    value = int(text) if len(text.lstrip("-")) <= 19 else None
    if value is None or value not in INT64:
        raise _NotJSONNumber(
            f"{text[:24]}{'…' if len(text) > 24 else ''} is outside 64-bit integers"
        )
    return value


_DECODER = json.JSONDecoder(
    parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_int64
)
"""What ``parse_json`` parses with: ``json.loads`` with these hooks makes (and compiles a
scanner for) a new decoder at every call, much of a small payload's parse (a stream entry's:
bench/results/levers.md, "ingest_stream")."""


class _ParsedRequest(Request):
    """A request whose body ``read_json`` read before FastAPI asks for it."""

    parsed: Any = None

    async def json(self) -> Any:
        return self.parsed


class JSONBodyRoute(APIRoute):
    """An ``APIRoute`` whose JSON body is read by ``read_json``, not by ``Request.json``.

    FastAPI would answer a body of another media type with a 422 about dictionaries, broken
    JSON with a character offset as the ``loc``, and accept ``NaN``. The body is read before
    the dependencies (authorization) run, as FastAPI does; an empty body is left to FastAPI
    (422: the body is required).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def read_first(request: Request) -> Response:
            ours = _ParsedRequest(request.scope, request.receive)
            raw = await ours.body()
            if raw:
                ours.parsed = read_json(ours.headers.get("content-type"), raw)
            return await handler(ours)

        return read_first
