"""The sharded outbound pool against a real local server: requests take the shards in turn."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from app.channels.http_pool import ShardedTransport
from tests.support.http_server import HttpServer, serve_http


@dataclass
class PeerRecorder(HttpServer):
    """An HttpServer that also notes the client port each request came from."""

    peers: list[int] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.peers.append(scope["client"][1])
        await super().__call__(scope, receive, send)


async def test_requests_go_round_the_shards_each_keeping_its_connection() -> None:
    async with serve_http(PeerRecorder()) as server:
        assert isinstance(server, PeerRecorder)
        limits = httpx.Limits(max_connections=8, max_keepalive_connections=4)
        transport = ShardedTransport(limits, shards=4)
        async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
            for i in range(8):
                response = await client.post(server.url("/a"), content=f"{i}")
                assert response.status_code == 200
        # One after another: one pool would reuse one connection; four shards use one each.
        assert len(set(server.peers)) == 4
        assert server.peers[:4] == server.peers[4:], "each shard reused its own connection"


def test_at_least_one_shard() -> None:
    with pytest.raises(ValueError):
        ShardedTransport(httpx.Limits(), shards=0)
