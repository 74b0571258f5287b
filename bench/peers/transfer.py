"""The pure-transfer baseline of the attachments benchmark: the same bytes, the same legs.

``STREAMS`` tasks share the tickets; for each ticket a task downloads its files one after
the other from the file server (bytes counted and dropped), then posts the same number of
files of the same size to the file server's sink. No broker, no API, no disk, no checks:
what moving the bytes over loopback costs. Prints JSON: seconds and bytes per leg.

    python bench/peers/transfer.py FILES_URL SINK_URL TICKETS NAMES STREAMS
"""

from __future__ import annotations

import asyncio
import sys
import time

import aiohttp
import orjson

CHUNK = 256 * 1024


async def main(files_url: str, sink: str, tickets: int, names: list[str], streams: int) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for ticket in range(tickets):
        queue.put_nowait(ticket)
    moved = {"down": 0, "up": 0}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=streams)) as http:
        # One file's bytes in memory for the upload leg (the worker reads its spool instead).
        async with http.get(f"{files_url}/{names[0]}") as response:
            body = await response.read()

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                for name in names:
                    async with http.get(f"{files_url}/{name}") as response:
                        async for chunk in response.content.iter_chunked(CHUNK):
                            moved["down"] += len(chunk)
                for _ in names:
                    async with http.post(sink, data=body) as response:
                        moved["up"] += (await response.json())["size"]

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(streams)))
        seconds = time.monotonic() - started
    print(orjson.dumps({"seconds": seconds, "down": moved["down"], "up": moved["up"]}).decode())


if __name__ == "__main__":
    url, sink_url, count, names_csv, streams_n = sys.argv[1:6]
    asyncio.run(main(url, sink_url, int(count), names_csv.split(","), int(streams_n)))
