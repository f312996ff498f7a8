"""Every loop a delivering process runs (``herald serve`` unless ``--no-worker``, and
``herald worker``): delivery, event dispatch and Telegram inbound, until ``stop``."""

from __future__ import annotations

import asyncio

from app.delivery.worker import Worker, supervise_worker
from app.events.dispatcher import Dispatcher
from app.inbound.poller import receive
from app.runtime import Runtime


async def run_loops(runtime: Runtime, stop: asyncio.Event) -> None:
    await asyncio.gather(
        supervise_worker(Worker(runtime), stop),
        Dispatcher(runtime).run(stop),
        receive(runtime, stop),
    )
