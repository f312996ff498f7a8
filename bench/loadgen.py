"""A separate-process load generator for POST /v1/notifications (raw HTTP/1.1 keep-alive).

Modes (each bounded in time and count, prints one JSON object on stdout):

    rate    open loop: --rate requests/s for --duration s over up to --connections connections
    idle    --count requests one at a time, --gap s apart (an idle service between them)
    closed  --connections connections sending back to back for --duration s (wrk's job; a
            fallback for machines without wrk)
    count   exactly --count requests over --connections connections, as fast as answered
            (with --body-file: e.g. batches of 500 to POST /v1/notifications/batch)

Every accepted request's id (from ``Location``) and the client's send and answer times
(``time.time()``) are reported, so the caller can join them with the sink's receive times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from urllib.parse import urlsplit

import uvloop

BODY = (
    b'{"subject":"Disk almost full","text":"db-1: / at 93%","severity":"warning",'
    b'"source":"bench","metadata":{"host":"db-1","check":"disk"}}'
)


class Connection:
    def __init__(self, host: str, port: int, path: str, body: bytes) -> None:
        self.host, self.port = host, port
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> tuple[int, str | None]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        location = None
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "location":
                location = value.strip()
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        if length:
            await self.reader.readexactly(length)
        if close:
            self.writer.close()
            self.writer = None
        return status, location


def _id(location: str | None) -> str | None:
    return location.rsplit("/", 1)[-1] if location else None


async def rate_mode(args: argparse.Namespace, parts: tuple[str, int, str]) -> dict[str, object]:
    free: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(args.connections):
        free.put_nowait(Connection(*parts, BODY))
    sent: list[tuple[str | None, float, float, int]] = []
    late: list[float] = []
    tasks: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        connection = await free.get()
        began = time.time()
        late.append(max(0.0, began - scheduled))
        try:
            status, location = await connection.post()
        except (OSError, asyncio.IncompleteReadError, ValueError):
            connection.writer = None
            status, location = 0, None
        sent.append((_id(location), began, time.time(), status))
        free.put_nowait(connection)

    total = int(args.rate * args.duration)
    start = time.time() + 0.05
    for i in range(total):
        scheduled = start + i / args.rate
        delay = scheduled - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    elapsed = max(s[2] for s in sent) - start if sent else 0.0
    return {
        "mode": "rate",
        "target_rate": args.rate,
        "sent": len(sent),
        "accepted": sum(1 for s in sent if s[3] == 202),
        "achieved_rate": len(sent) / elapsed if elapsed else 0.0,
        "send_lateness_p99_ms": 1000 * sorted(late)[int(len(late) * 0.99) - 1] if late else None,
        "requests": [list(s) for s in sent],
    }


async def idle_mode(args: argparse.Namespace, parts: tuple[str, int, str]) -> dict[str, object]:
    connection = Connection(*parts, BODY)
    sent = []
    for _ in range(args.count):
        began = time.time()
        status, location = await connection.post()
        sent.append((_id(location), began, time.time(), status))
        await asyncio.sleep(args.gap)
    return {"mode": "idle", "sent": len(sent), "requests": [list(s) for s in sent]}


async def closed_mode(args: argparse.Namespace, parts: tuple[str, int, str]) -> dict[str, object]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + args.duration

    async def loop() -> None:
        nonlocal errors
        connection = Connection(*parts, BODY)
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            try:
                status, _ = await connection.post()
            except (OSError, asyncio.IncompleteReadError, ValueError):
                connection.writer = None
                errors += 1
                continue
            if status >= 400:
                errors += 1
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(args.connections)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "mode": "closed",
        "requests": len(latencies),
        "duration_us": int(elapsed * 1e6),
        "errors": {"status": errors},
        "latency_us": {
            "p50": int(statistics.median(latencies) * 1e6) if latencies else 0,
            "p99": int(latencies[int(len(latencies) * 0.99) - 1] * 1e6) if latencies else 0,
        },
    }


async def count_mode(args: argparse.Namespace, parts: tuple[str, int, str]) -> dict[str, object]:
    body = Path(args.body_file).read_bytes() if args.body_file else BODY
    remaining = args.count
    statuses: dict[int, int] = {}

    async def loop() -> None:
        nonlocal remaining
        connection = Connection(*parts, body)
        while remaining > 0:
            remaining -= 1
            try:
                status, _ = await asyncio.wait_for(connection.post(), timeout=60)
            except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError):
                connection.writer = None
                status = 0
            statuses[status] = statuses.get(status, 0) + 1

    began = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(args.connections)))
    return {"mode": "count", "seconds": time.perf_counter() - began, "statuses": statuses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("rate", "idle", "closed", "count"))
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1/notifications")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--gap", type=float, default=0.1)
    parser.add_argument("--body-file", help="request body (count mode)")
    args = parser.parse_args()
    if args.duration > 120 or args.count > 10_000:
        raise SystemExit("bounded: --duration ≤ 120 s, --count ≤ 10000")
    url = urlsplit(args.url)
    parts = (url.hostname or "127.0.0.1", url.port or 80, url.path or "/")
    mode = {"rate": rate_mode, "idle": idle_mode, "closed": closed_mode, "count": count_mode}[
        args.mode
    ]
    result = uvloop.run(mode(args, parts))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
