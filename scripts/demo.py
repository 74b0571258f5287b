"""`make demo`: the whole flow on this machine, then everything it started is stopped again.

Starts the bundled SCX emulator and the worker (as the operator would: `scx-forwarder ...`
processes), publishes sample events (some invalid) with `scx-forwarder publish`, and shows
what the emulator accepted and what landed in the dead-letter queue. Then the way back: the
seller answers one forwarded ticket (a reply with a file, injected into the emulator as SCX
would hold it), `scx-forwarder events` picks it up, and the marketplace's reply queue shows
the file and the `ticket.replied` event. It uses its own exchange and queues
(`marketplace.demo`, `scx.tickets.demo[.dlq]`, `marketplace.replies.demo`, ...) and removes
them at the end, so it can run beside a real installation and again and again.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import orjson

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
EXCHANGE, QUEUE = "marketplace.demo", "scx.tickets.demo"
DLQ = f"{QUEUE}.dlq"
REFRESH_TOKEN = "demo-refresh-token"
VALID, INVALID = 6, 6
LOG_DIR = Path(".demo")
# The way back: what the marketplace binds for replies, and the bridge's own queue and lock.
REPLIES = "marketplace.replies.demo"
UNROUTED, LOCK = "scx.events.demo.unrouted", "scx.events.demo.lock"
REPLY_FILE = b"Tracking number: 00340434161234567890\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start(name: str, *args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    log = (LOG_DIR / f"{name}.log").open("wb")
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", *args, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
    )


async def poll(what: str, check: Any, limit: float = 30.0) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.1)
    raise SystemExit(f"demo: gave up waiting for {what}; see {LOG_DIR}/*.log")


async def reset_broker_objects() -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for queue in (QUEUE, DLQ, REPLIES, UNROUTED):
            await channel.queue_delete(queue)
        await channel.exchange_delete(EXCHANGE)


async def dead_letters() -> list[aio_pika.abc.AbstractIncomingMessage]:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(DLQ, passive=True)
        found = []
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            found.append(message)  # left unacked: they go back when the channel closes
        return found


async def main() -> int:
    await reset_broker_objects()
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    env = dict(
        os.environ,
        AMQP_URL=AMQP_URL,
        AMQP_EXCHANGE=EXCHANGE,
        AMQP_QUEUE=QUEUE,
        SCX_API_URL=api,
        SCX_REFRESH_TOKEN=REFRESH_TOKEN,
        SCX_MAX_REQUESTS_PER_MINUTE="600",  # the demo paces 10x faster than production
        LOG_FORMAT="json",
    )
    emulator = await start("emulator", "emulator", "--port", str(port), env=env)
    worker = bridge = None
    try:
        async with httpx.AsyncClient(base_url=api) as http:

            async def emulator_up() -> bool:
                try:
                    return (await http.get("/_emulator/state")).status_code == 200
                except httpx.TransportError:
                    return False

            await poll("the emulator", emulator_up)
            print(f"● SCX emulator listening on {api}")
            worker = await start("worker", "run", env=env)

            async def consuming() -> bool:
                return b'"worker.consuming"' in (LOG_DIR / "worker.log").read_bytes()

            await poll("the worker", consuming)
            print(f"● worker consuming {QUEUE} (logs: {LOG_DIR}/worker.log)")

            sample = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker", "sample", "--count", str(VALID),
                "--invalid", str(INVALID), stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            lines, _ = await sample.communicate()
            publish = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker", "publish", "-", env=env,
                stdin=asyncio.subprocess.PIPE,
            )  # fmt: skip
            await publish.communicate(lines)
            print(f"● published {VALID} valid and {INVALID} invalid events to {EXCHANGE}\n")

            async def all_accepted() -> dict[str, Any] | None:
                state: dict[str, Any] = (await http.get("/_emulator/state")).json()
                return state if len(state["accepted"]) >= VALID else None

            state = await poll("the valid tickets to arrive", all_accepted)
            dead = await poll("the dead letters", _enough_dead_letters)

        print(f"Forwarded to POST /v1/channel/ticket ({len(state['accepted'])}):")
        for ticket in state["accepted"]:
            ref = ticket.get("reference", {}).get("type", "-")
            print(
                f"  {ticket['ticketId']:<10} seller={ticket['sellerId']:<10} "
                f"topic={ticket['topic']:<9} from={ticket['from']['role']:<8} reference={ref}"
            )
        print(f"\nDead-lettered to {DLQ} ({len(dead)}):")
        for message in dead:
            headers = message.headers
            print(f"  {headers['x-error-kind']:<10} {headers['x-error-reason']}")
            print(f"  {'':<10} body: {message.body[:60]!r}")
        print(f"\nAPI calls: {state['auth_calls']} token refresh, {state['ticket_calls']} tickets")

        bridge = await _reply_comes_back(api, env, state["accepted"][0])
        return 0
    finally:
        for process in (bridge, worker, emulator):
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await process.wait()
        await reset_broker_objects()
        print("● stopped the bridge, the worker and the emulator, removed the demo queues")


async def _reply_comes_back(
    api: str, env: dict[str, str], ticket: dict[str, Any]
) -> asyncio.subprocess.Process:
    """The seller answers ``ticket`` in JTL; the events bridge brings the answer back."""
    seller, ticket_id = ticket["sellerId"], ticket["ticketId"]
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        replies = await channel.declare_queue(REPLIES, durable=True)
        for key in ("ticket.replied", "ticket.replied.attachment"):
            await replies.bind(exchange, routing_key=key)
        reply = {
            "id": "5cde84164d811d00144581f8",
            "createdAt": "2026-11-30T12:00:00+00:00",
            "clientVersion": "1.11.0.6",
            "type": "Seller:Ticket.Reply",
            "event": {
                "sellerId": seller,
                "ticketId": ticket_id,
                "replyRequested": False,
                "createdAt": "2026-11-30T12:00:00+00:00",
                "from": {"role": "SELLER", "name": "Shop support"},
                "message": "Sorry for the wait: your parcel left today.",
                "attachment": [{"filename": "tracking.txt", "contentType": "text/plain"}],
            },
        }
        file = {
            "sellerId": seller,
            "ticketId": ticket_id,
            "filename": "tracking.txt",
            "contentType": "text/plain",
            "data": base64.b64encode(REPLY_FILE).decode(),
        }
        async with httpx.AsyncClient(base_url=api) as http:
            injected = await http.post(
                "/_emulator/events", json={"events": [reply], "files": [file]}
            )
            injected.raise_for_status()
        print(f"\n● the seller replied to {ticket_id} in JTL (a Seller:Ticket.Reply with a file)")
        bridge_env = env | {
            "EVENTS_UNROUTED_QUEUE": UNROUTED,
            "EVENTS_LOCK_NAME": LOCK,
            "EVENTS_POLL_INTERVAL": "1",
            "METRICS_PORT": "0",
        }
        bridge = await start("events", "events", env=bridge_env)
        print(f"● events bridge polling GET /v1/channel/event (logs: {LOG_DIR}/events.log)")

        received: list[aio_pika.abc.AbstractIncomingMessage] = []

        async def both() -> bool:
            while (message := await replies.get(no_ack=True, fail=False)) is not None:
                received.append(message)
            return len(received) >= 2

        await poll("the reply to come back", both)
    print(f"\nBack in {REPLIES} (bound to ticket.replied and ticket.replied.attachment):")
    for message in received:
        headers = message.headers or {}
        if message.routing_key == "ticket.replied.attachment":
            name, sha = str(headers["filename"]), str(headers["sha256"])
            print(
                f"  {message.routing_key:<26} {name} ({message.content_type}, "
                f"sha256 {sha[:12]}...): {message.body.decode().strip()!r}"
            )
        else:
            data = orjson.loads(message.body)["data"]
            print(f"  {message.routing_key:<26} ticket {data['ticket_id']} seller "
                  f"{data['seller_id']}, {data['author']['role']} {data['author']['name']!r}: "
                  f"{data['message']!r}")  # fmt: skip
    print("  (the file first, then the reply; message_id: the event id, the file's + /filename)")
    return bridge


async def _enough_dead_letters() -> list[Any] | None:
    found = await dead_letters()
    return found if len(found) >= INVALID else None


if __name__ == "__main__":
    LOG_DIR.mkdir(exist_ok=True)
    sys.exit(asyncio.run(main()))
