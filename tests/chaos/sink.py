"""A webhook receiver for the chaos suite, run as its own process.

    python -m tests.chaos.sink --port 8123 --log /tmp/x/sink.log

Every request appends one tab-separated line to the log, written once its body is in (before
any delay), so a try that a killed worker never saw answered is still counted::

    <arrival, unix seconds>  <webhook-id header>  <data.id of the body>  <path>  <status answered>

A request whose sender vanished before the whole body arrived (a worker killed mid-send) is
logged with status 0 and no data.id, and not answered.

What it answers comes from the query string of the URL Herald posts to, so each channel of a
test config can ask for its own behaviour:

- ``status=500``: answer 500; ``status=429&retry_after=2``: 429 with ``Retry-After: 2``;
- ``fail_first=K``: 500 for the first K requests of each webhook-id, 200 afterwards;
- ``delay=S``: wait S seconds before answering (a try stays in flight that long).

``GET /stats`` answers ``{"requests": n, "ids": distinct webhook-ids}``. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qs

import uvicorn

Scope = dict[str, Any]


class Sink:
    def __init__(self, log: TextIO) -> None:
        self.log = log
        self.per_id: Counter[str] = Counter()
        self.requests = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        arrived = time.time()
        body, complete = await _read_body(receive)
        path: str = scope["path"]
        if scope["method"] == "GET" and path == "/stats":
            stats = {"requests": self.requests, "ids": len(self.per_id)}
            await _answer(
                send, 200, json.dumps(stats).encode(), {"content-type": "application/json"}
            )
            return
        query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()}
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        webhook_id = headers.get("webhook-id", "-")
        self.requests += 1
        if not complete:  # the sender died mid-request (kill -9): logged, never answered
            self.log.write(f"{arrived:.6f}\t{webhook_id}\t-\t{path}\t0\n")
            return
        self.per_id[webhook_id] += 1
        status = int(query.get("status", "200"))
        if "fail_first" in query:
            status = 500 if self.per_id[webhook_id] <= int(query["fail_first"]) else 200
        extra: dict[str, str] = {}
        if status == 429 and "retry_after" in query:
            extra["retry-after"] = query["retry_after"]
        self.log.write(
            f"{arrived:.6f}\t{webhook_id}\t{_data_id(body)}\t{path}\t{status}\n"
        )  # line-buffered: on disk before the answer goes out
        delay = float(query.get("delay", "0"))
        if delay > 0:
            await asyncio.sleep(delay)
        await _answer(send, status, b"ok" if status < 300 else b"chaos says no", extra)


def _data_id(body: bytes) -> str:
    try:
        return str(json.loads(body)["data"]["id"])
    except (ValueError, KeyError, TypeError):
        return "-"


async def _read_body(receive: Any) -> tuple[bytes, bool]:
    """The request body, and whether all of it arrived (no disconnect half-way)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks), True


async def _answer(send: Any, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args()
    with args.log.open("a", encoding="utf-8", buffering=1) as log:
        uvicorn.run(
            Sink(log),
            host="127.0.0.1",
            port=args.port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_keep_alive=30,
        )


if __name__ == "__main__":
    main()
