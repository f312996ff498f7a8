"""A/B two versions of Herald's app package on one scenario, runs interleaved A, B, A, B, …

For measuring a candidate change before it goes into app/: copy app/ to DIR/app, change it,
and compare. Interleaving pairs of short runs cancels most of what other work on the machine
does to the figures; CPU per operation (the Herald process's own CPU time) is the steadier
figure when the machine is shared.

    cp -r app /tmp/b/app && $EDITOR /tmp/b/app/store/db.py
    .venv/bin/python bench/ab.py --b /tmp/b --scenario ingest --pairs 5
    .venv/bin/python bench/ab.py --a /tmp/a --b /tmp/b --scenario deliver --pairs 5

With --together, A and B run at the same time, each on its own database with its own load
generator, so whatever else the machine does hits both alike (they also compete with each other,
which on a CPU-bound pair turns a cost difference into a rate difference).

``--a`` defaults to the work tree's app/. ``ingest``: wrk -c64 for --seconds against
``herald serve --no-worker``. ``deliver``: a 20,000-row due backlog, one ``herald worker``
for --seconds. DIR may also hold extra packages (e.g. sniffio) that then shadow the venv's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--a", type=Path, help="directory holding app/ (default: a snapshot of ./app)"
    )
    parser.add_argument("--b", type=Path, required=True, help="directory holding the changed app/")
    parser.add_argument("--scenario", choices=("ingest", "deliver"), required=True)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--env-b", action="append", default=[], help="NAME=VALUE for B only")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--together", action="store_true", help="run A and B simultaneously")
    args = parser.parse_args()
    if args.together:
        together(args)
        return
    if not 1 <= args.pairs <= 20 or args.seconds > 30:
        raise SystemExit("bounded: --pairs 1..20, --seconds ≤ 30")
    ns = argparse.Namespace(
        keep=False,
        runs=1,
        ingest_seconds=args.seconds,
        deliver_window=args.seconds,
        app_dir=None,
    )
    b = bench.Bench(ns)
    results: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    extra_b = dict(item.split("=", 1) for item in args.env_b)
    try:
        b.setup()
        assert b.pg is not None
        url = bench.sqlalchemy_url(b.dsn)
        dirs = {"a": args.a or b.snapshot, "b": args.b}

        def env(side: str) -> dict[str, str]:
            out = b.herald_env(url) | {"PYTHONPATH": str(dirs[side])}
            return out | (extra_b if side == "b" else {})

        if args.scenario == "ingest":
            serves = {}
            for side in ("a", "b"):
                port = bench.free_port()
                proc = b.procs.start(
                    f"serve-{side}",
                    [bench.HERALD, "serve", "--no-worker", "--port", str(port)],
                    env(side),
                )
                bench.wait_http(f"http://127.0.0.1:{port}/readyz", proc=proc)
                serves[side] = (proc, port)
                b.wrk(b.api(port), 2)
            for _ in range(args.pairs):
                for side in ("a", "b"):
                    proc, port = serves[side]
                    b.truncate()
                    window = bench.Window([proc], b.pg, b.database)
                    result = b.wrk(b.api(port), args.seconds)
                    result = ingest_result(b, result, window.close())
                    results[side].append(result)
                    bench.log(f"ingest {side}: {result}")
        else:
            for _ in range(args.pairs):
                for side in ("a", "b"):
                    b.truncate()
                    proc = b.procs.start(f"worker-{side}", [bench.HERALD, "worker"], env(side))
                    b.wait_listening(proc)
                    window = bench.Window([proc], b.pg, b.database)
                    b.fill(bench.BACKLOG, notify=True)
                    time.sleep(args.seconds)
                    cpu = window.close()
                    b.procs.stop(proc)
                    stats = deliver_result(b, cpu)
                    results[side].append(stats)
                    bench.log(f"deliver {side}: {stats}")
    except BaseException:
        b.teardown(failed=True)
        raise
    else:
        b.teardown()
    report(args, results, extra_b)


def together(args: argparse.Namespace) -> None:
    from concurrent.futures import ThreadPoolExecutor

    ns = argparse.Namespace(
        keep=False,
        runs=1,
        ingest_seconds=args.seconds,
        deliver_window=args.seconds,
        app_dir=None,
    )
    benches = {"a": bench.Bench(ns), "b": bench.Bench(ns)}
    benches["b"].database += "_b"
    benches["b"].dsn = bench.pg_dsn(benches["b"].database)
    extra_b = dict(item.split("=", 1) for item in args.env_b)
    results: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    try:
        for one in benches.values():
            one.setup()
        dirs = {"a": args.a or benches["a"].snapshot, "b": args.b}

        def env(side: str) -> dict[str, str]:
            one = benches[side]
            out = one.herald_env(bench.sqlalchemy_url(one.dsn)) | {"PYTHONPATH": str(dirs[side])}
            return out | (extra_b if side == "b" else {})

        pool = ThreadPoolExecutor(2)
        if args.scenario == "ingest":
            ports = {}
            procs = {}
            for side, one in benches.items():
                port = bench.free_port()
                proc = one.procs.start(
                    f"serve-{side}",
                    [bench.HERALD, "serve", "--no-worker", "--port", str(port)],
                    env(side),
                )
                bench.wait_http(f"http://127.0.0.1:{port}/readyz", proc=proc)
                ports[side], procs[side] = port, proc
            list(pool.map(lambda side: benches[side].wrk(benches[side].api(ports[side]), 2), "ab"))
            for _ in range(args.pairs):
                windows = {}
                for side, one in benches.items():
                    one.truncate()
                for side, one in benches.items():
                    windows[side] = bench.Window([procs[side]], one.pg, one.database)
                outs = dict(
                    zip(
                        "ab",
                        pool.map(
                            lambda side: benches[side].wrk(
                                benches[side].api(ports[side]), args.seconds
                            ),
                            "ab",
                        ),
                        strict=True,
                    )
                )
                for side, one in benches.items():
                    result = ingest_result(one, outs[side], windows[side].close())
                    results[side].append(result)
                    bench.log(f"ingest {side}: {result}")
        else:
            for _ in range(args.pairs):
                procs, windows = {}, {}
                for side, one in benches.items():
                    one.truncate()
                    procs[side] = one.procs.start(
                        f"worker-{side}", [bench.HERALD, "worker"], env(side)
                    )
                for side, one in benches.items():
                    one.wait_listening(procs[side])
                for side, one in benches.items():
                    windows[side] = bench.Window([procs[side]], one.pg, one.database)
                for side, one in benches.items():
                    one.fill(bench.BACKLOG, notify=True)
                time.sleep(args.seconds)
                for side, one in benches.items():
                    cpu = windows[side].close()
                    one.procs.stop(procs[side])
                    stats = deliver_result(one, cpu)
                    results[side].append(stats)
                    bench.log(f"deliver {side}: {stats}")
    except BaseException:
        for one in benches.values():
            one.teardown(failed=True)
        raise
    else:
        for one in benches.values():
            one.teardown()
    report(args, results, extra_b)


def ingest_result(one: bench.Bench, wrk: dict[str, Any], cpu: dict[str, Any]) -> dict[str, Any]:
    """wrk's figures plus the serve process's CPU per stored notification."""
    assert one.pg is not None
    rows = one.pg.val("SELECT count(*) FROM notifications")
    return wrk | {
        "rate": wrk["rps"],
        "cpu_ms_per_op": round(1000 * cpu["process_cpu_s"] / rows, 3),
        "other_cores": cpu["other_cores"],
    }


def deliver_result(one: bench.Bench, cpu: dict[str, Any]) -> dict[str, Any]:
    """The delivery figures plus the worker's CPU per delivered notification."""
    stats = one.delivered_stats()
    delivered = stats["delivered"]
    return stats | {
        "cpu_ms_per_op": round(1000 * cpu["process_cpu_s"] / delivered, 3) if delivered else None,
        "other_cores": cpu["other_cores"],
    }


def report(
    args: argparse.Namespace, results: dict[str, list[dict[str, Any]]], extra_b: dict[str, str]
) -> None:
    summary: dict[str, Any] = {
        "scenario": args.scenario,
        "together": args.together,
        "a": str(args.a or "work tree app/"),
        "b": str(args.b),
        "env_b": extra_b,
    }
    for key in ("rate", "cpu_ms_per_op"):
        a_values = [r[key] for r in results["a"]]
        b_values = [r[key] for r in results["b"]]
        summary[key] = {
            "a": statistics.median(a_values),
            "b": statistics.median(b_values),
            "b_over_a_paired": round(
                statistics.median(y / x for x, y in zip(a_values, b_values, strict=True) if x), 3
            ),
        }
    summary["runs"] = results
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    if args.output:
        args.output.write_text(json.dumps(summary, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
