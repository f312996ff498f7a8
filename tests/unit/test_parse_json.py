"""``parse_json`` reads with orjson first and with strict ``json`` when orjson refuses or may
read differently: both readers give the same answer to every body."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from app.api.body import parse_json, parse_json_strictly
from app.errors import Unprocessable

EDGES: list[bytes] = [
    b"",
    b" ",
    b"null",
    b"true",
    b"[]",
    b"{}",
    b" {\t}\r\n",
    b"{}x",
    b"[1,]",
    b"{'a':1}",
    b"01",
    b".5",
    b"-0",
    b"-0.0",
    b"1.5E+3",
    b"1e-400",
    b"0.000000000000000000001",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e400",
    b"-1e999",
    b"1.7976931348623157e309",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"18446744073709551615",
    b"18446744073709551616",
    b"1" + b"0" * 100,
    b"1" * 5000,
    b"123456789012345678901234567890.5",
    b'{"a":1,"a":2}',
    b'"a\x01b"',
    b'"\\u0000"',
    b'"\\ud800"',
    b'"\\ud83d\\ude00"',
    b'"\\/"',
    b'"\xed\xa0\x80"',
    b'"\xc3\xa9"',
    b'"\xff\xfe"',
    b'"\xc0\xaf"',
    b"\xef\xbb\xbf{}",
    b"\xef\xbb\xbf\xef\xbb\xbf{}",
    '{"text":"x"}'.encode("utf-16"),
    b'{"phone":"1234567890123456789"}',
    b"[" * 100 + b"]" * 100,
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' * 800 + b"1" + b"}" * 800,
]


def _value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(9 if depth < 6 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-(2**63), 2**63 - 1) >> rng.randrange(64)
    if kind == 2:
        return rng.uniform(-1e6, 1e6) * 10.0 ** rng.randint(-300, 300)
    if kind in (3, 4, 5):
        alphabet = 'ab "\\/\n\t\u0001\u007fé\u2028\U0001f600'
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(8)))
    if kind in (6, 7):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(_value(rng, 6)): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _generated() -> list[bytes]:
    rng = random.Random(20261204)
    return [
        json.dumps(_value(rng, 0), ensure_ascii=rng.random() < 0.5).encode() for _ in range(500)
    ]


def _answer(read: Any, raw: bytes) -> tuple[str, str]:
    try:
        return "value", repr(read(raw))
    except Unprocessable as exc:
        return "refused", str(exc)


@pytest.mark.parametrize("raw", EDGES, ids=lambda raw: repr(raw[:24]))
def test_both_readers_answer_an_edge_alike(raw: bytes) -> None:
    assert _answer(parse_json, raw) == _answer(parse_json_strictly, raw)


def test_both_readers_answer_generated_bodies_alike() -> None:
    for raw in _generated():
        assert _answer(parse_json, raw) == _answer(parse_json_strictly, raw), raw
