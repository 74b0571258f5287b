"""FastStream + httpx, written the way FastStream's documentation shows it.

``RabbitBroker``, ``FastStream(broker)``, ``@broker.subscriber``, all defaults: no channel
QoS (so the broker pushes the whole backlog), the default ack policy (ack after the handler
returns, reject on an exception), JSON decoded by FastStream. The queue exists already (the
harness declared it with the worker's arguments), so it is attached with ``declare=False``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx

# FastStream is in the `bench` extras only; CI type-checks bench/ without it.
from faststream import FastStream  # type: ignore[import-not-found, unused-ignore]
from faststream.rabbit import (  # type: ignore[import-not-found, unused-ignore]
    RabbitBroker,
    RabbitQueue,
)

broker = RabbitBroker(os.environ["AMQP_URL"])
app = FastStream(broker)
http = httpx.AsyncClient(base_url=os.environ["SCX_API_URL"])
headers: dict[str, str] = {}


@app.on_startup  # type: ignore[untyped-decorator, unused-ignore]
async def get_token() -> None:
    auth = await http.post("/v1/auth", data={"refreshToken": os.environ["SCX_REFRESH_TOKEN"]})
    auth.raise_for_status()
    headers["Authorization"] = f"Bearer {auth.json()['authToken']}"


@broker.subscriber(RabbitQueue(os.environ["BENCH_QUEUE"], declare=False))  # type: ignore[untyped-decorator, unused-ignore]
async def forward(ticket: dict[str, Any]) -> None:
    response = await http.post("/v1/channel/ticket", json=ticket, headers=headers)
    response.raise_for_status()


if __name__ == "__main__":
    asyncio.run(app.run())
