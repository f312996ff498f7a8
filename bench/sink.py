"""A fast local webhook sink for the benchmark: answers every POST with 200 and ``{}``.

A raw asyncio protocol on uvloop with the httptools parser (HTTP/1.1 keep-alive), so it is not
the bottleneck: ``make bench`` measures its capacity with wrk before anything else.

It records, for each request that carries a ``webhook-id`` header, the id and the time it was
received (``time.time()``, the same clock Herald and PostgreSQL stamp rows with on this machine),
so accept→delivered latency can be measured at the receiver. Control paths:

    GET  /_stats   {"count": requests received, "recorded": ids held}
    POST /_reset   clear the count and the records
    GET  /_dump    {"ids": [[webhook-id, unix time], ...]} and clear the records

    .venv/bin/python bench/sink.py --port 9100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time

import httptools
import uvloop

MAX_RECORDS = 2_000_000
OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class State:
    def __init__(self) -> None:
        self.count = 0
        self.records: list[tuple[str, float]] = []


STATE = State()


def _response(body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


class SinkProtocol(asyncio.Protocol):
    __slots__ = ("_header", "parser", "transport", "url", "webhook_id")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.webhook_id: bytes | None = None
        self._header = b""

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()  # type: ignore[attr-defined]

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.webhook_id = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 10 and name.lower() == b"webhook-id":
            self.webhook_id = value

    def on_message_complete(self) -> None:
        url = self.url
        if url.startswith(b"/_"):
            self.transport.write(self._control(url))  # type: ignore[attr-defined]
        else:
            STATE.count += 1
            if self.webhook_id is not None and len(STATE.records) < MAX_RECORDS:
                STATE.records.append((self.webhook_id.decode(), time.time()))
            self.transport.write(OK)  # type: ignore[attr-defined]
        if not self.parser.should_keep_alive():
            self.transport.close()  # type: ignore[attr-defined]

    def _control(self, url: bytes) -> bytes:
        if url.startswith(b"/_stats"):
            return _response(
                json.dumps({"count": STATE.count, "recorded": len(STATE.records)}).encode()
            )
        if url.startswith(b"/_reset"):
            STATE.count = 0
            STATE.records = []
            return _response(b"{}")
        if url.startswith(b"/_dump"):
            records, STATE.records = STATE.records, []
            return _response(json.dumps({"ids": records}).encode())
        return _response(b'{"error":"unknown control path"}')


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SinkProtocol, host, port, backlog=1024, reuse_address=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"sink listening on http://{host}:{port}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
