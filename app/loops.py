"""Every loop a delivering process runs (``herald serve`` unless ``--no-worker``, and
``herald worker``): delivery, event dispatch (unless it runs in ``herald events``) and Telegram
inbound, until ``stop``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from app.delivery.supervise import supervised
from app.delivery.worker import Worker, supervise_worker
from app.events.dispatcher import Dispatcher
from app.inbound.poller import receive
from app.runtime import Runtime


def delivery_loops(
    runtime: Runtime, stop: asyncio.Event, *, events: bool = True
) -> list[Awaitable[None]]:
    """The loops of a delivering process; ``events``: the event dispatcher among them."""
    running: list[Awaitable[None]] = [
        supervise_worker(Worker(runtime), stop),
        receive(runtime, stop),
    ]
    if events:
        running.append(Dispatcher(runtime).run(stop))
    if runtime.fleet_circuits is not None:
        running.append(supervised("circuits", runtime.fleet_circuits.run, stop))
    return running


async def run_loops(runtime: Runtime, stop: asyncio.Event) -> None:
    await asyncio.gather(*delivery_loops(runtime, stop))
