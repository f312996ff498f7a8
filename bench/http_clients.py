"""HTTP client overhead for webhook delivery: httpx (as Herald uses it) against alternatives.

POSTs the same ~400-byte JSON body --requests times to the sink with --concurrency requests in
flight (Herald's worker default, 32) and reports requests/s and the client process's CPU seconds
per 1,000 requests, each the median of --runs. Clients that are not installed are skipped.

    .venv/bin/python bench/sink.py --port 9100 &
    python -m venv /tmp/clients && /tmp/clients/bin/pip install -c requirements/constraints.txt \\
        httpx aiohttp uvloop sniffio
    /tmp/clients/bin/python bench/http_clients.py --url http://127.0.0.1:9100/hook

Variants:
    httpx            httpx.AsyncClient with Herald's pool limits (200 / 50 keep-alive)
    httpx-guarded    the same behind Herald's GuardedTransport (needs the app package)
    httpx-pool32     httpx with max_keepalive_connections=32 (no more idle sockets than tasks)
    httpx-sharded4   four httpx clients, requests spread round-robin (shorter pool scans)
    herald-client    httpx.AsyncClient on Herald's transport (guarded, app/channels/http_pool.py)
    herald-outbound  Herald's Outbound on the same transport (what the worker uses)
    aiohttp          aiohttp.ClientSession, TCPConnector(limit=200)
    raw              hand-written HTTP/1.1 on asyncio streams (a floor, not a candidate)
each on asyncio and on uvloop. Run once with and once without ``sniffio`` installed: httpcore
imports it on every request and a failed import searches sys.path each time.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from urllib.parse import urlsplit

BODY = json.dumps(
    {
        "type": "notification",
        "timestamp": 1795000000,
        "data": {
            "id": "0195a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            "route": "default",
            "subject": "Disk almost full",
            "text": "db-1: / at 93%",
            "html": None,
            "severity": "warning",
            "source": "bench",
            "metadata": {"host": "db-1", "check": "disk"},
            "recipient": {},
        },
    },
    separators=(",", ":"),
).encode()
HEADERS = {
    "content-type": "application/json",
    "webhook-id": "0195a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
    "webhook-timestamp": "1795000000",
}


async def drive(post, requests: int, concurrency: int) -> None:  # type: ignore[no-untyped-def]
    remaining = requests

    async def loop() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            status = await post()
            if status != 200:
                raise RuntimeError(f"status {status}")

    await asyncio.gather(*(loop() for _ in range(concurrency)))


async def run_httpx(url: str, n: int, c: int, variant: str) -> None:
    import httpx

    keepalive = 32 if variant == "httpx-pool32" else 50
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=keepalive)
    if variant == "httpx-sharded4":
        # four clients, each with a quarter of the pool: httpcore's per-request scan of its
        # connections is quadratic in the connections in use
        shards = [
            httpx.AsyncClient(
                transport=httpx.AsyncHTTPTransport(
                    limits=httpx.Limits(max_connections=50, max_keepalive_connections=13)
                ),
                follow_redirects=False,
                trust_env=False,
            )
            for _ in range(4)
        ]
        turn = 0

        async def post_sharded() -> int:
            nonlocal turn
            turn += 1
            client = shards[turn % 4]
            response = await client.post(url, content=BODY, headers=HEADERS, timeout=10.0)
            _ = response.text
            return response.status_code

        await drive(post_sharded, n, c)
        for client in shards:
            await client.aclose()
        return
    transport: httpx.AsyncBaseTransport = httpx.AsyncHTTPTransport(limits=limits)
    if variant == "httpx-guarded":
        from app.security.guard import AddressGuard, GuardedTransport

        guard = AddressGuard(allowed=[__import__("ipaddress").ip_network("127.0.0.0/8")])
        transport = GuardedTransport(guard, transport)
    async with httpx.AsyncClient(
        transport=transport, follow_redirects=False, trust_env=False
    ) as client:

        async def post() -> int:
            response = await client.post(url, content=BODY, headers=HEADERS, timeout=10.0)
            _ = response.text
            return response.status_code

        await drive(post, n, c)


async def run_herald(url: str, n: int, c: int, variant: str) -> None:
    import ipaddress

    import httpx

    from app.channels.http_pool import PooledTransport
    from app.channels.outbound import Outbound
    from app.runtime import HTTP_LIMITS
    from app.security.guard import AddressGuard, GuardedTransport

    guard = AddressGuard(allowed=[ipaddress.ip_network("127.0.0.0/8")])
    transport = GuardedTransport(guard, PooledTransport(HTTP_LIMITS))
    if variant == "herald-outbound":
        outbound = Outbound(transport)

        async def post() -> int:
            response = await outbound.post(url, content=BODY, headers=HEADERS, timeout=10.0)
            return response.status_code

        await drive(post, n, c)
        await outbound.aclose()
        return
    async with httpx.AsyncClient(
        transport=transport, follow_redirects=False, trust_env=False
    ) as client:

        async def post_client() -> int:
            response = await client.post(url, content=BODY, headers=HEADERS, timeout=10.0)
            return response.status_code

        await drive(post_client, n, c)


async def run_aiohttp(url: str, n: int, c: int, variant: str) -> None:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=200)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post() -> int:
            async with session.post(
                url, data=BODY, headers=HEADERS, allow_redirects=False
            ) as response:
                await response.text()
                return response.status

        await drive(post, n, c)


async def run_raw(url: str, n: int, c: int, variant: str) -> None:
    parts = urlsplit(url)
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
        + f"content-length: {len(BODY)}\r\n\r\n"
    ).encode()
    pool: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post() -> int:
        if pool:
            reader, writer = pool.pop()
        else:
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(head + BODY)
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        length = next(
            int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        pool.append((reader, writer))
        return int(lines[0].split()[1])

    await drive(post, n, c)


CLIENTS = {
    "httpx": run_httpx,
    "httpx-guarded": run_httpx,
    "httpx-pool32": run_httpx,
    "httpx-sharded4": run_httpx,
    "herald-client": run_herald,
    "herald-outbound": run_herald,
    "aiohttp": run_aiohttp,
    "raw": run_raw,
}
MODULES = {
    "httpx": "httpx",
    "httpx-guarded": "app",
    "httpx-pool32": "httpx",
    "httpx-sharded4": "httpx",
    "herald-client": "app",
    "herald-outbound": "app",
    "aiohttp": "aiohttp",
}


def child(args: argparse.Namespace) -> None:
    runner = CLIENTS[args.client]
    coro = runner(args.url, args.requests, args.concurrency, args.client)
    began = time.perf_counter()
    cpu0 = time.process_time()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu0
    print(
        json.dumps(
            {"rps": args.requests / elapsed, "cpu_ms_per_1k": 1000 * cpu / args.requests * 1000}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:9100/hook")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--loops", default="asyncio,uvloop")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--loop", help=argparse.SUPPRESS)
    parser.add_argument("--output", help="also write the results as JSON here")
    args = parser.parse_args()
    if args.requests > 200_000:
        raise SystemExit("bounded: --requests ≤ 200000")
    if args.client:
        child(args)
        return
    sniffio = importlib.util.find_spec("sniffio") is not None
    variants = []
    for client in args.clients.split(","):
        module = MODULES.get(client)
        if module and importlib.util.find_spec(module) is None:
            print(f"{client}: not installed, skipped", file=sys.stderr)
            continue
        for loop in args.loops.split(","):
            if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
                continue
            variants.append((client, loop))
    # Runs interleaved (every variant once, then again) so that a noisy spell on the machine
    # falls on all of them rather than on one.
    runs: dict[tuple[str, str], list[dict[str, float]]] = {v: [] for v in variants}
    for _ in range(args.runs):
        for client, loop in variants:
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--client",
                    client,
                    "--loop",
                    loop,
                    "--url",
                    args.url,
                    "--requests",
                    str(args.requests),
                    "--concurrency",
                    str(args.concurrency),
                ],
                capture_output=True,
                text=True,
                timeout=300,
                check=True,
            )
            runs[client, loop].append(json.loads(done.stdout))
    results = []
    for (client, loop), done_runs in runs.items():
        row = {
            "client": client,
            "loop": loop,
            "sniffio_installed": sniffio,
            "rps": round(statistics.median(r["rps"] for r in done_runs)),
            "cpu_ms_per_1k": round(statistics.median(r["cpu_ms_per_1k"] for r in done_runs)),
            "runs_rps": [round(r["rps"]) for r in done_runs],
            "runs_cpu_ms_per_1k": [round(r["cpu_ms_per_1k"]) for r in done_runs],
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
