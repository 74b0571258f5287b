"""`make demo`: the whole flow on this machine, then everything it started is stopped again.

Starts the bundled SCX emulator and the worker (as the operator would: `scx-forwarder ...`
processes), publishes sample events (some invalid) with `scx-forwarder publish`, and shows
what the emulator accepted and what landed in the dead-letter queue. One more ticket carries two
attachment files, one downloaded from a local file server (standing in for an object store) and
one inline as base64; the demo fetches both back from the emulator and compares their SHA-256.
Then the conversation closes: the seller answers the ticket with files (a reply with a file
and `replyRequested`, injected into the emulator as SCX would hold it), `scx-forwarder events`
picks it up, the marketplace's reply queue shows the file and the `ticket.replied` event, and
the buyer answers with another file of the same name, published like any ticket event with the
same `ticketId`. The demo ends with the conversation as SCX holds it: three messages, every file
opened by its name. It uses its own exchange and queues (`marketplace.demo`,
`scx.tickets.demo[.dlq]`, the delay stage's `scx.tickets.demo.retry.*`,
`marketplace.replies.demo`, ...) and removes every one of them at the end, so it can run beside
a real installation and again and again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
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
from aiohttp import web

from worker.core.settings import Settings

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
# The ticket with files: a PNG the worker downloads, a text file inline.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)
NOTE = "Die Tür klemmt seit Dienstag.\n".encode()
# The buyer's answer to the seller's reply: another file under the same name as the first.
ANSWER_NOTE = "Die Tür klemmt immer noch, jetzt auch bei Regen.\n".encode()
# Every queue the demo's worker declares: the work queue, its DLQ and its delay stage.
WORK_QUEUES = (QUEUE, DLQ, *Settings(amqp_queue=QUEUE).retry_queues)


def event_with_files(files_url: str) -> bytes:
    return orjson.dumps(
        {
            "id": "evt-files",
            "type": "ticket.created",
            "data": {
                "seller_id": "4711",
                "ticket_id": "CASE-FILES",
                "topic": "incident",
                "created_at": "2026-11-27T10:00:00Z",
                "author": {"role": "buyer", "name": "Dave"},
                "subject": "The pod bay door",
                "message": "A photo and my notes are attached.",
                "attachments": [
                    {"filename": "Red Dot (1).png", "content_type": "image/png",
                     "url": f"{files_url}/tickets/red-dot.png"},
                    {"filename": "Notizen.txt", "content_type": "text/plain",
                     "content_base64": base64.b64encode(NOTE).decode()},
                ],
            },
        }
    )  # fmt: skip


async def start_file_server(port: int) -> web.AppRunner:
    """A tiny object store: GET /tickets/red-dot.png."""

    async def red_dot(_: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    app = web.Application()
    app.router.add_get("/tickets/red-dot.png", red_dot)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


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
        for queue in (*WORK_QUEUES, REPLIES, UNROUTED):
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
    files_url = f"http://127.0.0.1:{free_port()}"
    file_server = await start_file_server(int(files_url.rsplit(":", 1)[1]))
    env = dict(
        os.environ,
        AMQP_URL=AMQP_URL,
        AMQP_EXCHANGE=EXCHANGE,
        AMQP_QUEUE=QUEUE,
        SCX_API_URL=api,
        SCX_REFRESH_TOKEN=REFRESH_TOKEN,
        SCX_MAX_REQUESTS_PER_MINUTE="600",  # the demo paces 10x faster than production
        ATTACHMENT_ALLOWED_URLS=f"{files_url}/tickets/",
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
            await publish.communicate(lines + event_with_files(files_url) + b"\n")
            print(
                f"● published {VALID} valid and {INVALID} invalid events to {EXCHANGE}, "
                "and one ticket with two attachment files\n"
            )

            async def all_accepted() -> dict[str, Any] | None:
                state: dict[str, Any] = (await http.get("/_emulator/state")).json()
                done = len(state["accepted"]) > VALID and len(state["files"]) >= 2
                return state if done else None

            state = await poll("the valid tickets to arrive", all_accepted)
            dead = await poll("the dead letters", _enough_dead_letters)
            arrived = await _files_back(http, state)

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
        print("\nAttachments uploaded to CASE-FILES (POST /v1/channel/ticket/attachment):")
        for line in arrived:
            print(f"  {line}")
        uploads = state["channel_calls"].get("upload", 0)
        print(
            f"\nAPI calls: {state['auth_calls']} token refresh, {state['ticket_calls']} tickets, "
            f"{uploads} uploads"
        )

        [question] = [t for t in state["accepted"] if t["ticketId"] == "CASE-FILES"]
        bridge = await _reply_comes_back(api, env, question)
        await _buyer_answers(env)
        async with httpx.AsyncClient(base_url=api) as http:
            await _show_conversation(http, "CASE-FILES")
        return 0
    finally:
        await file_server.cleanup()
        for process in (bridge, worker, emulator):
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await process.wait()
        await reset_broker_objects()
        print(
            "● stopped the bridge, the worker and the emulator, removed the demo queues "
            f"({', '.join(WORK_QUEUES)}, {REPLIES}, {UNROUTED})"
        )


async def _files_back(http: httpx.AsyncClient, state: dict[str, Any]) -> list[str]:
    """Each stored file, downloaded back as a seller would, checked against the source."""
    token = (await http.post("/v1/auth", data={"refreshToken": REFRESH_TOKEN})).json()
    auth = {"Authorization": f"Bearer {token['authToken']}"}
    sources = {"image/png": PNG, "text/plain": NOTE}
    [ticket] = [t for t in state["accepted"] if t["ticketId"] == "CASE-FILES"]
    lines = []
    for stored in state["files"]:
        query = {k: stored[k] for k in ("sellerId", "ticketId", "filename")}
        data = (await http.get("/v1/channel/ticket/attachment", params=query, headers=auth)).content
        same = (
            hashlib.sha256(data).hexdigest()
            == hashlib.sha256(sources[stored["contentType"]]).hexdigest()
        )
        named = any(a["filename"] == stored["filename"] for a in ticket.get("attachment", []))
        lines.append(
            f"{stored['filename']:<16} {stored['contentType']:<11} {stored['size']:>4} bytes  "
            f"sha256 {stored['sha256'][:16]}…  "
            f"{'identical to the source' if same else 'DIFFERENT from the source'}, "
            f"{'named in the ticket' if named else 'NOT named in the ticket'}"
        )
    return lines


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
                "replyRequested": True,
                "createdAt": "2026-11-30T12:00:00+00:00",
                "from": {"role": "SELLER", "name": "Shop support"},
                "message": "Sorry: a technician is on the way (tracking attached). Still stuck?",
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
                  f"{data['message']!r}, replyRequested={data['reply_requested']}")  # fmt: skip
    print("  (the file first, then the reply; message_id: the event id, the file's + /filename)")
    return bridge


async def _buyer_answers(env: dict[str, str]) -> None:
    """The reply asked for an answer: the buyer's goes out as another event of the same ticket."""
    answer = {
        "id": "evt-files-answer",
        "type": "ticket.created",
        "data": {
            "seller_id": "4711",
            "ticket_id": "CASE-FILES",
            "topic": "incident",
            "created_at": "2026-11-30T14:00:00Z",
            "author": {"role": "buyer", "name": "Dave"},
            "subject": "Re: The pod bay door",
            "message": "It is still stuck; my new notes are attached.",
            "attachments": [
                {"filename": "Notizen.txt", "content_type": "text/plain",
                 "content_base64": base64.b64encode(ANSWER_NOTE).decode()},
            ],
        },
    }  # fmt: skip
    publish = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "publish", "-", env=env, stdin=asyncio.subprocess.PIPE
    )
    await publish.communicate(orjson.dumps(answer) + b"\n")
    print("\n● the buyer answered CASE-FILES with another Notizen.txt (scx-forwarder publish)")


async def _show_conversation(http: httpx.AsyncClient, ticket_id: str) -> None:
    """The conversation as SCX holds it: its messages in order, every file opened by name."""

    async def whole() -> dict[str, Any] | None:
        shown = (await http.get("/_emulator/tickets")).json()["conversations"]
        [found] = [c for c in shown if c["ticketId"] == ticket_id]
        return found if len(found["messages"]) >= 2 and len(found["files"]) >= 4 else None

    conversation = await poll("the buyer's answer to arrive", whole)
    token = (await http.post("/v1/auth", data={"refreshToken": REFRESH_TOKEN})).json()
    auth = {"Authorization": f"Bearer {token['authToken']}"}
    messages = [(m["createdAt"], m["from"], m["message"], m["attachment"])
                for m in conversation["messages"]]  # fmt: skip
    for reply in conversation["replies"]:
        named = [a["filename"] for a in reply.get("attachment") or ()]
        messages.append((reply["createdAt"], reply["from"], reply["message"], named))
    messages.sort(key=lambda m: m[0])
    print(
        f"\nThe conversation {ticket_id} in SCX ({len(messages)} messages, GET /_emulator/tickets):"
    )
    for created_at, author, text, names in messages:
        print(f"  {created_at}  {author['role']:<6} {text!r}")
        for name in names:
            query = {"sellerId": conversation["sellerId"], "ticketId": ticket_id, "filename": name}
            got = await http.get("/v1/channel/ticket/attachment", params=query, headers=auth)
            text = got.headers.get("Content-Type", "").startswith("text/")
            shown = (
                repr(got.content[:48].decode(errors="replace").strip())
                if text
                else f"sha256 {hashlib.sha256(got.content).hexdigest()[:16]}…"
            )
            print(
                f"  {'':<26}  📎 {name}: HTTP {got.status_code}, {len(got.content)} bytes, {shown}"
            )
    print("  (each buyer file carries its message's discriminator: two Notizen.txt, two names)")


async def _enough_dead_letters() -> list[Any] | None:
    found = await dead_letters()
    return found if len(found) >= INVALID else None


if __name__ == "__main__":
    LOG_DIR.mkdir(exist_ok=True)
    sys.exit(asyncio.run(main()))
