"""Summarise a py-spy ``--format raw`` (collapsed stacks) profile as a short text report.

    .venv/bin/python bench/profile_summary.py serve.raw --top 30 > serve.txt

Prints the sample count, the functions with the most *self* samples, the functions with the
most *inclusive* samples (a function counted once per stack it appears in), and the share of
samples under a few Herald-relevant subsystems (SQLAlchemy, asyncpg, pydantic, FastAPI/Starlette,
httpx/httpcore, prometheus_client, JSON, logging, the event loop).
"""

from __future__ import annotations

import argparse
import gzip
import re
from collections import Counter
from pathlib import Path

SUBSYSTEMS = {
    "sqlalchemy": "(sqlalchemy/",
    "asyncpg": "(asyncpg/",
    "pydantic": "(pydantic",
    "fastapi": "(fastapi/",
    "starlette": "(starlette/",
    "uvicorn": "(uvicorn/",
    "httpx": "(httpx/",
    "httpcore": "(httpcore/",
    "aiohttp": "(aiohttp/",
    "h11": "(h11/",
    "anyio (threadpool, sockets)": "(anyio/",
    "threading/queue (threadpool hand-off)": ("(threading.py", "(queue.py"),
    "prometheus_client": "(prometheus_client/",
    "greenlet": "(greenlet/",
    "json (stdlib)": "(json/",
    "logging (stdlib)": "(logging/",
    "asyncio (stdlib)": "(asyncio/",
    "uuid (stdlib)": "(uuid.py",
    "app (herald)": "(app/",
}

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^)]*?)(?::(?P<line>\d+))?\)$")


def short(frame: str) -> str:
    """``func (path/to/module.py)`` with the path cut to its last three parts, no line number."""
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    parts = path.split("/")
    for marker in ("site-packages", "lib"):
        if marker in parts:
            parts = parts[len(parts) - parts[::-1].index(marker) :]
            break
    return f"{match['func']} ({'/'.join(parts[-3:])})"


def layer(frames: list[str]) -> str:
    """The package of the innermost frame that belongs to a known package."""
    for frame in reversed(frames):
        for label, markers in SUBSYSTEMS.items():
            if isinstance(markers, str):
                markers = (markers,)
            if any(m in frame for m in markers):
                return label
    return "other"


def load(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if f]
        # py-spy puts "process ..." and "thread ..." frames first
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        stacks.append((frames, int(count)))
    return stacks


FOCUS = (
    # API: one POST /v1/notifications
    "app.api.notifications:FastAccept.__call__",
    "app.api.notifications:_accept",
    "app.api.notifications:create_notification",
    "fastapi.dependencies.utils:solve_dependencies",
    "starlette.concurrency:run_in_threadpool",
    "app.api.deps:get_session",
    "app.service:accept",
    "app.service:admit",
    "app.service:new_notification",
    "app.api.body:body_hash",
    "app.store.intake:Intake.add_many",
    "app.store.repositories:NotificationRepository.announce_due",
    "sqlalchemy.ext.asyncio:AsyncSession.commit",
    "sqlalchemy.ext.asyncio:AsyncSession.close",
    "app.api.notifications:detail_of",
    "starlette.responses:JSONResponse.render",
    "starlette.responses:JSONResponse.__init__",
    "app.api.middleware:Edge.__call__",
    "prometheus_client.metrics:MetricWrapperBase.labels",
    "starlette.responses:Response.__call__",
    # worker: one delivery
    "app.delivery.worker:Worker.claim",
    "app.delivery.worker:Worker.deliver",
    "app.delivery.worker:Worker._save",
    "app.delivery.worker:Worker._observe",
    "app.delivery.worker:message_of",
    "app.delivery.orchestrator:Orchestrator.run_round",
    "app.channels.webhook:WebhookChannel.send",
    "app.channels.webhook:payload",
    "app.channels.outbound:Outbound.post",
    "app.channels.http_pool:PooledTransport.handle_async_request",
    "app.security.guard:GuardedTransport.handle_async_request",
    "app.store.queue:WorkQueue.claim",
    "app.store.queue:claimed_of",
    "app.store.queue:WorkQueue.save_rounds",
    "app.store.queue:PlainSql.args",
    "app.delivery.saves:GroupSaver._flush",
    "app.delivery.orchestrator:AttemptRecord.row",
    "app.delivery.worker:Worker.sweep",
    "sqlalchemy.orm:Session._flush",
    "sqlalchemy.orm:Session.execute",
    "sqlalchemy.util.concurrency:greenlet_spawn",
)
"""The steps worth a line of their own, each as ``module:qualified name`` so that a test can
check it still exists; a frame matches on the qualified name (py-spy's ``Class.method``)."""


def focus(stacks: list[tuple[list[str], int]], total: int) -> list[str]:
    """Inclusive share of a few named functions (matched on the function name)."""
    lines = []
    for entry in FOCUS:
        name = entry.partition(":")[2]
        count = sum(n for frames, n in stacks if any(f.split(" (", 1)[0] == name for f in frames))
        if count:
            lines.append(f"{100 * count / total:5.1f}%  {count:6d}  {name}")
    return lines


def summarise(path: Path, top: int) -> str:
    stacks = load(path)
    total = sum(count for _, count in stacks) or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    subsystems: Counter[str] = Counter()
    for frames, count in stacks:
        if not frames:
            continue
        own[short(frames[-1])] += count
        for name in {short(f) for f in frames}:
            inclusive[name] += count
        subsystems[layer(frames)] += count
    lines = [f"# {path.name}: {total} samples", "", "## self time (leaf frame)", ""]
    for name, count in own.most_common(top):
        lines.append(f"{100 * count / total:5.1f}%  {count:6d}  {name}")
    lines += ["", "## inclusive time (on the stack)", ""]
    for name, count in inclusive.most_common(top * 2):
        lines.append(f"{100 * count / total:5.1f}%  {count:6d}  {name}")
    lines += ["", "## inclusive time of the steps that matter (function name match)", ""]
    lines += focus(stacks, total)
    lines += ["", "## self time by package (innermost frame in a known package)", ""]
    for name, count in subsystems.most_common():
        lines.append(f"{100 * count / total:5.1f}%  {count:6d}  {name}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    print(summarise(args.raw, args.top), end="")


if __name__ == "__main__":
    main()
