"""Every SQL statement Herald sends for one accepted and delivered notification.

Creates a scratch database with ``log_statement = 'all'`` (PostgreSQL superuser needed; lines go
to the server log, read from --log), starts ``herald serve --no-worker`` and ``herald worker``
against it with the bench's webhook config and a sink, POSTs one notification, waits until it is
delivered, and prints the statements each backend ran in that window, in order, grouped by
process (API vs worker). Idle polling (the claim every HERALD_POLL_INTERVAL, the sweep) shows
too; the POST's statements are the ones between the marker lines.

    .venv/bin/python bench/trace_statements.py > bench/results/profiles/statements.txt
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", default="/var/log/postgresql/postgresql-15-main.log")
    args = parser.parse_args()
    ns = argparse.Namespace(keep=False, runs=1, ingest_seconds=5, deliver_window=10, app_dir=None)
    b = bench.Bench(ns)
    try:
        b.setup()
        assert b.pg is not None
        b.pg.execute(f"ALTER DATABASE \"{b.database}\" SET log_statement = 'all'")
        url = bench.sqlalchemy_url(b.dsn)
        serve = b.start_serve(url)
        worker = b.procs.start("worker", [bench.HERALD, "worker"], b.herald_env(url))
        b.wait_listening(worker)
        time.sleep(1.5)
        offset = Path(args.log).stat().st_size
        b.pg.execute("SELECT 'TRACE MARKER: POST starts'")
        request = urllib.request.Request(
            b.api(), data=json.dumps({"subject": "trace", "text": "one"}).encode(), method="POST"
        )
        request.add_header("content-type", "application/json")
        with urllib.request.urlopen(request) as response:
            notification_id = json.loads(response.read())["id"]
        b.pg.execute("SELECT 'TRACE MARKER: POST answered'")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = b.pg.val(
                "SELECT status FROM notifications WHERE id = $1::uuid", notification_id
            )
            if status == "delivered":
                break
            time.sleep(0.05)
        time.sleep(0.3)
        b.pg.execute("SELECT 'TRACE MARKER: delivered'")
        api_pids = {
            r["pid"]
            for r in b.pg.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND client_port IS NOT NULL",
                b.database,
            )
        }
        with open(args.log, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
        b.procs.stop(worker)
        b.procs.stop(serve)
        b.pg.execute(f'ALTER DATABASE "{b.database}" RESET log_statement')
    finally:
        b.teardown()
    print(f"# statements for one notification (status {status}); database {b.database}")
    print("# [pid] statement   (the bench's own connection polls status: 'SELECT status …')\n")
    pattern = re.compile(r"\[(\d+)\].*?@" + re.escape(b.database) + r" LOG:  (.*)")
    for line in text.splitlines():
        match = pattern.search(line)
        if not match:
            continue
        pid, statement = match.groups()
        statement = re.sub(r"\s+", " ", statement)[:160]
        print(f"[{pid}] {statement}")
    _ = api_pids, os


if __name__ == "__main__":
    main()
