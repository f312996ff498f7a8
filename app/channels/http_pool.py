"""The outbound connection pool, split into shards that requests take in turn.

httpcore's pool looks at every connection it holds, for every request it sends and for every
response it closes, to match requests to idle connections. With Herald's 32 rounds in flight
and up to 50 kept-alive connections that scan was most of the HTTP client's CPU; eight pools of
an eighth of the size each scan an eighth as much. Eight, not more: past eight the CPU per POST
hardly fell, and each shard keeps its own connections to a provider, so more shards mean more
handshakes (bench/results/levers.md, "shards 1 / 4 / 8 / 16 / 32").
"""

from __future__ import annotations

import functools
import itertools
import math
import ssl

import httpx

SHARDS = 8


class ShardedTransport(httpx.AsyncBaseTransport):
    """``shards`` connection pools sharing ``limits`` between them; requests go round-robin.

    A request is sent whole by one shard, so everything an ``httpx.AsyncHTTPTransport`` does
    for one request (keep-alive, TLS, timeouts) is unchanged; only which pool it comes from is.
    """

    def __init__(self, limits: httpx.Limits, *, shards: int = SHARDS) -> None:
        if shards < 1:
            raise ValueError("shards must be at least 1")
        share = httpx.Limits(
            max_connections=_share(limits.max_connections, shards),
            max_keepalive_connections=_share(limits.max_keepalive_connections, shards),
            keepalive_expiry=limits.keepalive_expiry,
        )
        context = verifying_context()
        self.shards = [
            httpx.AsyncHTTPTransport(verify=context, limits=share) for _ in range(shards)
        ]
        self._turn = itertools.cycle(self.shards)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await next(self._turn).handle_async_request(request)

    async def aclose(self) -> None:
        for shard in self.shards:
            await shard.aclose()


@functools.cache
def verifying_context() -> ssl.SSLContext:
    """The process's one TLS context that verifies servers against the default CA bundle.

    Loading the CA bundle is slow; each shard building its own made every runtime (a test's, or
    a process's) pay it eight times (bench/results/levers.md, "one TLS context"). One context
    serves every connection.
    """
    return httpx.create_ssl_context()


def _share(total: int | None, shards: int) -> int | None:
    return None if total is None else max(1, math.ceil(total / shards))
