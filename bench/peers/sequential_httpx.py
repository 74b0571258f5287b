"""The usual first script: aio-pika + httpx, one message at a time.

As aio-pika's README shows it (``prefetch_count=10``, ``queue.iterator()``,
``async with message.process()``), with one shared ``httpx.AsyncClient``.
"""

from __future__ import annotations

import asyncio
import json
import os

import aio_pika
import httpx


async def main() -> None:
    async with httpx.AsyncClient(base_url=os.environ["SCX_API_URL"]) as http:
        auth = await http.post("/v1/auth", data={"refreshToken": os.environ["SCX_REFRESH_TOKEN"]})
        auth.raise_for_status()
        headers = {"Authorization": f"Bearer {auth.json()['authToken']}"}

        connection = await aio_pika.connect(os.environ["AMQP_URL"])
        async with connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=10)
            queue = await channel.get_queue(os.environ["BENCH_QUEUE"])
            async with queue.iterator() as messages:
                async for message in messages:
                    async with message.process():
                        ticket = json.loads(message.body)
                        response = await http.post(
                            "/v1/channel/ticket", json=ticket, headers=headers
                        )
                        response.raise_for_status()


if __name__ == "__main__":
    asyncio.run(main())
