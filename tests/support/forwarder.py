"""An in-process forwarder as the ``start_worker`` fixture hands it out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from worker.forward.consumer import Forwarder
from worker.scx import ScxClient


@dataclass
class Running:
    forwarder: Forwarder
    client: ScxClient
    task: asyncio.Task[int]

    async def stop(self) -> int:
        self.forwarder.stop()
        return await asyncio.wait_for(self.task, 30)


StartWorker = Callable[..., Awaitable[Running]]
