"""The JSON columns' serializer alone: ``json.dumps`` against Herald's ``dumps_json`` (orjson).

Serializes what an accept and a round write as JSON (a notification's recipient, metadata and
hops) and prints microseconds per notification for each, the best of --repeat runs of --number.

    .venv/bin/python bench/json_columns.py
"""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Callable
from typing import Any

from app.store.db import dumps_json

COLUMNS: list[Any] = [
    {"email": "ops@example.com", "webhook_url": "https://hooks.example.com/x"},
    {"host": "db-1", "region": "eu-west-1", "ticket": 4711},
    [
        {"channel": "hooks", "state": "delivered", "attempts": 1, "last_error": None},
        {"channel": "email", "state": "pending", "attempts": 0, "last_error": None},
    ],
]


def per_notification(serialize: Callable[[Any], str], number: int, repeat: int) -> float:
    """Microseconds to serialize the three columns, best of ``repeat``."""
    runs = timeit.repeat(lambda: [serialize(c) for c in COLUMNS], number=number, repeat=repeat)
    return min(runs) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    before = per_notification(json.dumps, args.number, args.repeat)
    after = per_notification(dumps_json, args.number, args.repeat)
    print(f"json.dumps {before:.2f} us, dumps_json {after:.2f} us, {before / after:.1f}x")


if __name__ == "__main__":
    main()
