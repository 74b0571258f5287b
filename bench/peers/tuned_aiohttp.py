"""The tuned reference: aio-pika with 64 concurrent handlers and one aiohttp ClientSession.

Prefetch 128 (twice the concurrency), orjson, a connector limited to 64 keep-alive
connections; non-2xx answers go back to the queue.
"""

from __future__ import annotations

import asyncio
import os

import aio_pika
import aiohttp
import orjson
from aio_pika.abc import AbstractIncomingMessage

CONCURRENCY = 64
PREFETCH = 2 * CONCURRENCY


async def main() -> None:
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(os.environ["SCX_API_URL"], connector=connector) as http:
        form = {"refreshToken": os.environ["SCX_REFRESH_TOKEN"]}
        async with http.post("/v1/auth", data=form) as auth:
            auth.raise_for_status()
            token = (await auth.json())["authToken"]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        slots = asyncio.Semaphore(CONCURRENCY)

        async def handle(message: AbstractIncomingMessage) -> None:
            async with slots:
                ticket = orjson.loads(message.body)
                async with http.post(
                    "/v1/channel/ticket", data=orjson.dumps(ticket), headers=headers
                ) as response:
                    accepted = 200 <= response.status < 300
                if accepted:
                    await message.ack()
                else:
                    await message.nack(requeue=True)

        connection = await aio_pika.connect(os.environ["AMQP_URL"])
        async with connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=PREFETCH)
            queue = await channel.get_queue(os.environ["BENCH_QUEUE"])
            await queue.consume(handle)
            await asyncio.Future()  # until the process is stopped


if __name__ == "__main__":
    asyncio.run(main())
