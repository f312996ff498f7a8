"""A webhook receiver for trying Herald's webhooks: one JSON line per request on stdout.

The docker-compose stack runs it (service ``webhook-receiver``, on python:*-slim: the standard
library only). Each line has the method, path, the Standard Webhooks headers, whether the
signature verifies against ``WEBHOOK_SECRET`` (``null`` when no secret is set) and the body.
It answers 200 with ``{"id": ...}``, or the status a request asks for with ``?status=NNN``, so
fallback and retries can be tried too:

    python deploy/webhook_receiver.py --port 8080
    docker compose logs -f webhook-receiver
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import logging
import os
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger("webhook-receiver")
MAX_BODY = 1024 * 1024


def signature_verifies(secret: str, headers: Any, body: bytes) -> bool:
    """The Standard Webhooks check: HMAC-SHA256 of ``id.timestamp.body`` under the secret."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers.get('webhook-id')}.{headers.get('webhook-timestamp')}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    offered = (headers.get("webhook-signature") or "").split()
    return any(
        hmac.compare_digest(value, expected)
        for version, _, value in (s.partition(",") for s in offered)
        if version == "v1"
    )


def decoded(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


class Receiver(BaseHTTPRequestHandler):
    secret: str | None = None

    def do_POST(self) -> None:
        length = min(int(self.headers.get("content-length") or 0), MAX_BODY)
        body = self.rfile.read(length)
        url = urlsplit(self.path)
        status = int(parse_qs(url.query).get("status", ["200"])[0])
        record = {
            "method": self.command,
            "path": url.path,
            "status": status,
            "webhook-id": self.headers.get("webhook-id"),
            "webhook-timestamp": self.headers.get("webhook-timestamp"),
            "user-agent": self.headers.get("user-agent"),
            "signature_verified": (
                signature_verifies(self.secret, self.headers, body) if self.secret else None
            ),
            "body": decoded(body),
        }
        logger.info(json.dumps(record, ensure_ascii=False))
        answer = json.dumps({"id": str(uuid.uuid4())} if status < 300 else {"status": status})
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer.encode())

    do_PUT = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default access log: each request is already one JSON line."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    Receiver.secret = os.environ.get("WEBHOOK_SECRET") or None
    server = ThreadingHTTPServer((args.host, args.port), Receiver)
    logger.info(json.dumps({"listening": f"http://{args.host}:{args.port}"}))
    server.serve_forever()


if __name__ == "__main__":
    main()
