"""The soak's moving parts, each started and stopped by the run itself, all on loopback.

- ``Child``: one ``scx-forwarder run`` or ``events`` process, restartable under the same
  role; its stdout goes line by line to a log file, scanned as it comes for secrets and for
  the few events the faults steer by (``broker.connected``, ``events.poller_active``). Every
  exit is recorded with whether the soak asked for it.
- ``OwnRedis``: a ``redis-server`` of the soak's own on a free port (append-only file, so a
  restart keeps the progress record, as a production Redis would); the machine's Redis on
  6379 is shared and never restarted.
- ``BurstyFileServer``: ``tests.support.fileserver.FileServer`` that answers 503 during a burst.
- ``Tap``: a quorum queue bound to every key the bridges and the outcome events use,
  consumed through a robust connection to the cluster.
- ``publish``: one batch with publisher confirms, through whichever node answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aiohttp import web

from tests.soak.ledger import TapCopy, tap_copy
from tests.support.fileserver import FileServer
from worker.amqp.broker import connect, connect_robust
from worker.amqp.topology import declare_topology
from worker.core.settings import Settings

# An access token as the emulator issues them (secrets.token_urlsafe(32)): 43 characters.
_TOKEN_SHAPED = re.compile(rb"[A-Za-z0-9_-]{43}")


@dataclass
class Exit:
    role: str
    at: float
    code: int
    asked: str | None  # "SIGKILL", "SIGTERM", or None: it exited on its own
    took: float | None = None  # seconds from SIGTERM to the exit


@dataclass
class Child:
    """A role (``worker-1``, ``bridge-2``) and the process currently playing it."""

    role: str
    command: str  # "run" or "events"
    env: dict[str, str]
    log_dir: Path
    clock: Callable[[], float]
    secrets: tuple[bytes, ...]
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    exits: list[Exit] = field(default_factory=list)
    events: Counter[str] = field(default_factory=Counter)
    node_port: int | None = None  # the port of its last broker.connected
    active_since: float | None = None  # bridges: when it last took the poller lock
    leaks: list[str] = field(default_factory=list)
    token_like: set[bytes] = field(default_factory=set)
    not_json: list[str] = field(default_factory=list)
    _asked: str | None = None
    _signalled_at: float = 0.0
    _reader: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def asked(self) -> str | None:
        """The signal the soak sent the current process, None while it is left alone."""
        return self._asked

    async def start(self, *, ready: tuple[str, ...], timeout: float = 60.0) -> None:
        """Start a process for the role and wait for one of its ``ready`` events."""
        self.starts += 1
        self._asked, self.node_port, self.active_since = None, None, None
        log = (self.log_dir / f"{self.role}.log").open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "worker",
            self.command,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        started = sum(self.events[name] for name in ready)
        self._reader = asyncio.create_task(self._read(self.process, log))
        deadline = time.monotonic() + timeout
        while sum(self.events[name] for name in ready) == started:
            if not self.alive or time.monotonic() > deadline:
                raise RuntimeError(f"{self.role} did not reach {ready} (see {log.name})")
            await asyncio.sleep(0.05)

    async def _read(self, process: asyncio.subprocess.Process, log: object) -> None:
        assert process.stdout is not None
        with log:  # type: ignore[attr-defined]
            async for line in process.stdout:
                log.write(line)  # type: ignore[attr-defined]
                self._scan(line)
        code = await process.wait()
        took = time.monotonic() - self._signalled_at if self._asked == "SIGTERM" else None
        self.exits.append(Exit(self.role, self.clock(), code, self._asked, took))

    def _scan(self, line: bytes) -> None:
        for secret in self.secrets:
            if secret in line:
                self.leaks.append(f"{self.role}: {line[:200].decode(errors='replace')}")
        self.token_like.update(_TOKEN_SHAPED.findall(line))
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            if len(self.not_json) < 20:
                self.not_json.append(line[:300].decode(errors="replace"))
            return
        if not isinstance(entry, dict):
            return
        name = str(entry.get("event"))
        self.events[name] += 1
        if name == "broker.connected":
            match = re.search(r":(\d+)/", str(entry.get("node", "")))
            self.node_port = int(match.group(1)) if match else None
        elif name == "events.poller_active":
            self.active_since = self.clock()
        elif name in ("events.lock_lost", "events.standby"):
            self.active_since = None

    def kill(self) -> None:
        if self.alive:
            assert self.process is not None
            self._asked = "SIGKILL"
            self.process.kill()

    def terminate(self) -> None:
        if self.alive:
            assert self.process is not None
            self._asked, self._signalled_at = "SIGTERM", time.monotonic()
            self.process.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float) -> bool:
        """Wait for the current process to exit (and its output to be read); False on timeout."""
        if self._reader is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self, grace: float) -> None:
        """SIGTERM, and SIGKILL if it outlives ``grace`` (recorded as such)."""
        self.terminate()
        if not await self.wait(grace):
            self.kill()
            await self.wait(30)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OwnRedis:
    """A redis-server of the soak's own; ``restart()`` is the fault."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = await asyncio.create_subprocess_exec(
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--logfile",
            str(self.directory / "redis.log"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not await self._answers():
            if self.process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start (see {self.directory})")
            await asyncio.sleep(0.05)

    async def _answers(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            return (await asyncio.wait_for(reader.readline(), 2)).startswith(b"+PONG")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            process.terminate()  # redis shuts down cleanly on SIGTERM, the AOF flushed
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()


@dataclass
class BurstyFileServer(FileServer):
    """The file server of the attachment URLs; ``burst = True`` answers 503 to everything."""

    burst: bool = False
    burst_answers: int = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.burst:
            self.burst_answers += 1
            return web.Response(status=503)
        return await super()._handle(request)

    def put_file(self, path: str, data: bytes, content_type: str) -> str:
        return self.put(path, data, content_type)


TAP_KEYS = (
    "scx.#",
    "ticket.replied",
    "ticket.replied.#",
    "ticket.forwarded",
    "ticket.dead_lettered",
)


class Tap:
    """Every seller-event message and outcome event, in arrival order (``copies``)."""

    def __init__(self, settings: Settings, queue: str) -> None:
        self.settings = settings
        self.queue = queue
        self.copies: list[TapCopy] = []
        self._connection: AbstractRobustConnection | None = None

    async def start(self) -> None:
        self._connection = await connect_robust(self.settings, "check")
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=500)
        exchange = await channel.declare_exchange(
            self.settings.amqp_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(
            self.queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        for key in TAP_KEYS:
            await queue.bind(exchange, routing_key=key)
        await queue.consume(self._take)

    async def _take(self, message: AbstractIncomingMessage) -> None:
        self.copies.append(tap_copy(message.routing_key or "", message.message_id, message.body))
        await message.ack()

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()


async def publish(settings: Settings, bodies: list[tuple[str, bytes]]) -> None:
    """Publish ``(message_id, body)`` pairs with confirms; raises if any is not confirmed."""
    connection = await connect(settings, "publish")
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = (await declare_topology(channel, settings)).exchange
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        body,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=message_id,
                        app_id="soak",
                    ),
                    routing_key=settings.amqp_binding_key,
                    mandatory=True,
                )
                for message_id, body in bodies
            )
        )


def environment_without_ours() -> dict[str, str]:
    """The runner's environment minus every variable the worker reads."""
    prefixes = ("AMQP_", "SCX_", "WORKER_", "METRICS_", "EVENTS_", "ATTACHMENT_", "OTEL_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
