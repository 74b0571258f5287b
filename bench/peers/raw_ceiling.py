"""The ceiling: aio-pika consume + ack, no JSON, no HTTP.

What one Python process with aio-pika can take off this queue at all; every contender's
figures are also given as a share of this one.
"""

from __future__ import annotations

import asyncio
import os

import aio_pika

PREFETCH = 128


async def main() -> None:
    connection = await aio_pika.connect(os.environ["AMQP_URL"])
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.get_queue(os.environ["BENCH_QUEUE"])
        async with queue.iterator() as messages:
            async for message in messages:
                await message.ack()


if __name__ == "__main__":
    asyncio.run(main())
