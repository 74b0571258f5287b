"""Drain rate and CPU cost of the worker by WORKER_CONCURRENCY, against the emulator.

Used to choose the defaults of WORKER_CONCURRENCY and AMQP_PREFETCH (see the README).
Each run: a fresh queue preloaded with N sample events, the emulator (its own process)
answering after a fixed latency, the worker (its own process, default settings but pacing
off and the concurrency under test) draining it. Reported: messages per second from the
first to the last accepted ticket, and the worker's CPU milliseconds per message.

    .venv/bin/python bench/concurrency.py [--latencies 0,0.02,0.1] [--levels 4,16,32,64,128]

The emulator validates every ticket with jsonschema, so at 0 ms latency it, not the worker,
may be the limit; the 20 ms and 100 ms rows are the ones that show latency hiding.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import sys
import time
import uuid

import httpx

from worker.publish import publish_lines
from worker.samples import sample_lines
from worker.settings import Settings
from worker.topology import declare_topology

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run_one(latency: float, concurrency: int, count: int) -> tuple[float, float]:
    import aio_pika

    suffix = uuid.uuid4().hex[:8]
    settings = Settings(
        amqp_url=AMQP_URL,
        amqp_exchange=f"bench.{suffix}",
        amqp_queue=f"bench.{suffix}",
    )
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await declare_topology(channel, settings)
        await publish_lines(settings, sample_lines(count))

        port = free_port()
        emulator = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "emulator", "--port", str(port),
            "--latency", str(latency), "--refresh-token", "bench",
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        env = dict(
            os.environ,
            AMQP_URL=AMQP_URL,
            AMQP_EXCHANGE=settings.amqp_exchange,
            AMQP_QUEUE=settings.amqp_queue,
            SCX_API_URL=f"http://127.0.0.1:{port}",
            SCX_REFRESH_TOKEN="bench",
            SCX_MAX_REQUESTS_PER_MINUTE="0",
            WORKER_CONCURRENCY=str(concurrency),
            AMQP_PREFETCH=str(2 * concurrency),
            LOG_FORMAT="json",
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    await http.get("/_emulator/state")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker", "run", env=env,
                stdout=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            first = last = None
            while True:
                state = (await http.get("/_emulator/state")).json()
                done = len(state["accepted"])
                now = time.monotonic()
                if done and first is None:
                    first = now
                if done >= count:
                    last = now
                    break
                await asyncio.sleep(0.05)
            cpu = cpu_seconds(worker.pid)
            worker.send_signal(signal.SIGTERM)
            await worker.wait()
        emulator.send_signal(signal.SIGTERM)
        await emulator.wait()
        await channel.queue_delete(settings.amqp_queue)
        await channel.queue_delete(settings.dead_letter_queue)
        await channel.exchange_delete(settings.amqp_exchange)
    assert first is not None
    assert last is not None
    return count / max(last - first, 1e-9), cpu * 1000 / count


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latencies", default="0,0.02,0.1")
    parser.add_argument("--levels", default="4,16,32,64,128")
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print("| API latency | concurrency | prefetch | msg/s | worker CPU ms/msg |")
    print("|---|---|---|---|---|")
    for latency in (float(x) for x in args.latencies.split(",")):
        for level in (int(x) for x in args.levels.split(",")):
            # Keep each run to ~20 s at most: fewer messages where the rate is bound to be low.
            count = min(args.count, max(200, int(20 * level / max(latency, 0.001))))
            rate, cpu = await run_one(latency, level, count)
            print(f"| {latency * 1000:.0f} ms | {level} | {2 * level} | {rate:.0f} | {cpu:.2f} |",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
