"""The deliver scenario with events, the CPU split by process: where events_ratio goes.

Runs ``make bench``'s deliver variants (``bench/run.py``'s own setup, fill and counts: a
20,000-row due backlog, one ``herald worker`` alone, or ``herald worker --no-events`` beside one
``herald events`` with a subscription taking every event) and, for each run, prints one JSON
line: the rate, the events delivered, how busy the machine was, and the CPU per notification
of each process: the worker, ``herald events``, the sink, and the PostgreSQL backends of each
(a backend is matched to its client by the client's port, with ``ss``). ``runq_wait_s`` is how
long each process waited for a CPU per second of the run (``/proc/PID/schedstat``): a process
slowed by the others' load, not by its own work.

``--dirs`` alternates copies of app/ run after run (interleaved A/B; ``-`` is the work tree's).

    .venv/bin/python bench/events_split.py --runs 3 --variants herald,herald_events
    .venv/bin/python bench/events_split.py --runs 4 --dirs /tmp/before,-
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench


def clients_by_port() -> dict[int, int]:
    """The pid of each local process connected to PostgreSQL, by its client port."""
    out = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4].endswith(":5432"):
            pid = re.search(r"pid=(\d+)", line)
            if pid:
                found[int(fields[3].rsplit(":", 1)[1])] = int(pid.group(1))
    return found


def runq_wait(pid: int) -> float:
    """Seconds the threads of ``pid`` have waited on a run queue."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[1])
    return total / 1e9


def one_run(b: bench.Bench, label: str) -> dict[str, Any]:
    assert b.pg is not None and b.sink is not None
    b.truncate()
    bench.http_json(f"{b.sink_url}/_reset", "POST", b"")
    worker, dispatcher = b.start_deliverer(label)
    names = {worker.pid: "worker", b.sink.pid: "sink"}
    if dispatcher is not None:
        names[dispatcher.pid] = "events"
    ports = clients_by_port()
    backends = {
        row["pid"]: names.get(ports.get(row["client_port"], 0), "other")
        for row in b.pg.fetch(
            "SELECT pid, client_port FROM pg_stat_activity WHERE datname = $1", b.database
        )
    }

    def snapshot() -> tuple[dict[str, float], dict[str, float]]:
        cpu: dict[str, float] = {}
        for pid, name in names.items():
            cpu[name] = bench.proc_cpu(pid)
        for pid, name in backends.items():
            cpu[f"pg_{name}"] = cpu.get(f"pg_{name}", 0.0) + bench.proc_cpu(pid)
        return cpu, {name: runq_wait(pid) for pid, name in names.items()}

    cpu0, wait0 = snapshot()
    began, busy0 = time.monotonic(), bench.system_busy_seconds()
    b.fill(bench.BACKLOG, notify=True)
    b.wait_delivered(bench.BACKLOG, b.args.deliver_window, b.count_delivered, worker)
    elapsed = time.monotonic() - began
    busy = bench.system_busy_seconds() - busy0
    cpu1, wait1 = snapshot()
    if dispatcher is not None:
        b.procs.stop(dispatcher)
    b.procs.stop(worker)
    stats = b.delivered_stats()
    events = b.pg.val("SELECT count(*) FROM event_deliveries WHERE status = 'delivered'")
    n = stats["delivered"] or 1
    split = {k: round(1000 * (cpu1[k] - cpu0.get(k, 0.0)) / n, 3) for k in cpu1}
    return {
        "label": label,
        "rate": stats["rate"],
        "delivered": stats["delivered"],
        "events_delivered": events,
        "machine_busy_cores": round(busy / elapsed, 2),
        "cpu_ms_per_notification": split,
        "total_ms_per_notification": round(sum(split.values()), 3),
        "events_cpu_ms_per_event": (
            round(1000 * (cpu1["events"] - cpu0["events"]) / events, 3)
            if "events" in cpu1 and events
            else None
        ),
        "runq_wait_s": {k: round((wait1[k] - wait0[k]) / elapsed, 3) for k in wait1},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--variants", default="herald_events", help="herald,herald_events")
    parser.add_argument("--dirs", default="-", help="copies of app/ to alternate; - : app/")
    parser.add_argument("--window", type=float, default=12.0, help="cut each run after this")
    args = parser.parse_args()
    b = bench.Bench(
        argparse.Namespace(
            runs=1,
            deliver_window=args.window,
            app_dir=None,
            keep=False,
            output=None,
        )
    )
    b.setup()
    try:
        for _ in range(args.runs):
            for directory in args.dirs.split(","):
                b.args.app_dir = None if directory == "-" else Path(directory)
                for label in args.variants.split(","):
                    print(json.dumps({"dir": directory, **one_run(b, label)}), flush=True)
    finally:
        b.teardown()


if __name__ == "__main__":
    main()
