"""Accept→delivered latency on an idle, running Herald: send one at a time, poll to the end.

    .venv/bin/python bench/idle_latency.py --url http://127.0.0.1:8000 --count 20

Reports the median and p90 of ``delivered_at - created_at`` (the server's own clock) and of the
time the client waited from POST to seeing ``delivered``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import datetime

import httpx

FINAL = {"delivered", "failed", "partial", "expired", "cancelled"}


async def measure(url: str, count: int, body: dict[str, object]) -> None:
    server_ms: list[float] = []
    client_ms: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for i in range(count):
            began = time.perf_counter()
            created = await client.post("/v1/notifications", json={**body, "text": f"ping {i}"})
            created.raise_for_status()
            location = created.headers["location"]
            while True:
                state = (await client.get(location)).json()
                if state["status"] in FINAL:
                    break
                await asyncio.sleep(0.001)
            client_ms.append((time.perf_counter() - began) * 1000)
            if state["status"] != "delivered":
                raise SystemExit(f"{location} ended {state['status']}: {state['last_error']}")
            delivered = datetime.fromisoformat(state["delivered_at"])
            accepted = datetime.fromisoformat(state["created_at"])
            server_ms.append((delivered - accepted).total_seconds() * 1000)
            await asyncio.sleep(0.2)  # let the service go idle again
    for name, values in (("server accept→delivered", server_ms), ("client POST→seen", client_ms)):
        values.sort()
        p90 = values[max(0, int(len(values) * 0.9) - 1)]
        print(
            f"{name}: median {statistics.median(values):.1f} ms, p90 {p90:.1f} ms, "
            f"min {values[0]:.1f} ms, max {values[-1]:.1f} ms (n={len(values)})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--route", default=None)
    args = parser.parse_args()
    body: dict[str, object] = {"subject": "latency probe"}
    if args.route:
        body["route"] = args.route
    asyncio.run(measure(args.url, args.count, body))


if __name__ == "__main__":
    main()
