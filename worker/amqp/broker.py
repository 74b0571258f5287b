"""The one way every command reaches RabbitMQ: a node of ``AMQP_URL`` after the other.

``AMQP_URL`` names one broker or the nodes of a cluster, separated by commas. ``connect``
tries the nodes in their order until one accepts (each attempt bounded by
``CONNECT_TIMEOUT``) and raises the last node's error when none does; a command with a
reconnect loop of its own (the events bridge) calls it again after a loss. With
``robust=True`` (``run``) the connection itself survives losing its node::

    connected to node i ──lost──> node i+1 at once ──fails──> node i+2 after
        ^                                                     reconnect_interval (5 s)
        └──────────────── restored: channels, queues, consumers ──┘

``ClusterConnection`` is aio-pika's ``RobustConnection`` (its reconnect loop, channel and
consumer restore) with one addition: whenever a connection closes without being asked to
(lost, refused, timed out, or its restore failed), the next attempt goes to the next node.
That hook (``_on_connection_close``) is the one aio-pika calls for every failed attempt as
well as for a lost connection, so the rotation needs no copy of its reconnect loop. A
load balancer or a Kubernetes Service in front of the cluster works too, with a single URL:
then the rotation is the balancer's.

Options in a URL's query (``heartbeat=10``, ``reconnect_interval=2``) apply to that node;
give every node the same ones. ``connection_name`` is how the broker's management UI and
``rabbitmqctl list_connections`` show each process.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Sequence
from typing import Any, Literal

import aio_pika
import structlog
from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from pamqp.common import FieldTable
from yarl import URL

from worker.core.settings import Settings, redact_url, scrub_passwords

log = structlog.get_logger(__name__)

# Seconds one attempt on one node may take (TCP, AMQP handshake): a node that vanished
# without closing its sockets must not hold up the failover to the next one.
CONNECT_TIMEOUT = 10.0

# What a failed connection attempt raises (refused, timed out, refused login, bad frames).
CONNECT_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_EXCEPTIONS, TimeoutError)

Command = Literal["run", "events", "publish", "dlq", "check"]


def connection_name(settings: Settings, command: Command, subject: str | None = None) -> str:
    """How the broker shows this process's connection: what it serves, command, host, pid.

    ``subject`` defaults to the work queue (``AMQP_QUEUE``); the events bridge names its
    exchange instead.
    """
    subject = subject or settings.amqp_queue
    return f"scx-forwarder {subject} {command} {socket.gethostname()}:{os.getpid()}"


def is_up(connection: AbstractConnection | None) -> bool:
    """Whether ``connection`` is open now (a robust one may be between two attempts)."""
    return connection is not None and not connection.is_closed and connection.connected.is_set()


class ClusterConnection(aio_pika.RobustConnection):
    """A robust connection that moves to the next node after each failed or lost connection."""

    def __init__(self, nodes: Sequence[URL], first: int = 0, **kwargs: Any) -> None:
        self._nodes = tuple(nodes)
        self._node = first % len(self._nodes)
        super().__init__(self._nodes[self._node], **kwargs)

    @property
    def node(self) -> str:
        """The node this connection is on, or tries next (password redacted)."""
        return redact_url(self.url)

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        if self.connected.is_set() and not self.close_called:
            error = scrub_passwords(_closing_error(closing), self._nodes)
            log.warning("broker.disconnected", node=self.node, error=error)
        try:
            await super()._on_connection_close(closing)
        finally:
            if not self.close_called and len(self._nodes) > 1:
                self._node = (self._node + 1) % len(self._nodes)
                self.url = self._nodes[self._node]

    async def _on_connected(self) -> None:
        reconnected = self.connection_attempt > 0
        await super()._on_connected()  # raises when restoring channels failed
        log.info("broker.connected", node=self.node, reconnected=reconnected)


def _closing_error(closing: asyncio.Future[Any]) -> str:
    try:
        exc = closing.exception()
    except asyncio.CancelledError:
        return "cancelled"
    return f"{type(exc).__name__}: {exc}" if exc is not None else "closed"


async def connect(
    settings: Settings,
    command: Command,
    *,
    robust: bool = False,
    heartbeat: int | None = None,
    subject: str | None = None,
) -> aio_pika.Connection:
    """A connection to the first node of ``AMQP_URL`` that accepts one.

    ``heartbeat`` (seconds) applies to every node whose URL does not set one. Raises the last
    node's error (``OSError``, ``TimeoutError``, an AMQP error) when none does; the error
    texts never hold a password (aio-pika prints URLs redacted).
    """
    nodes = settings.amqp_nodes
    if heartbeat is not None:
        nodes = tuple(
            url if "heartbeat" in url.query else url.update_query(heartbeat=heartbeat)
            for url in nodes
        )
    properties: FieldTable = {"connection_name": connection_name(settings, command, subject)}
    error: BaseException | None = None
    for position, node in enumerate(nodes):
        connection: aio_pika.Connection
        if robust:
            connection = ClusterConnection(nodes, position, client_properties=properties)
        else:
            connection = aio_pika.Connection(node, client_properties=properties)
        try:
            await connection.connect(timeout=CONNECT_TIMEOUT)
        except CONNECT_ERRORS as exc:
            await connection.close()
            error = exc
            if len(nodes) > 1:
                log.warning(
                    "broker.node_unreachable",
                    node=redact_url(node),
                    error=settings.scrub(f"{type(exc).__name__}: {exc}"),
                )
            continue
        except BaseException:
            # Cancelled mid-connect (a shutdown): close what was opened, or its socket is left
            # to the garbage collector and warns wherever that happens to run.
            await connection.close()
            raise
        return connection
    assert error is not None
    raise error


async def connect_robust(settings: Settings, command: Command) -> ClusterConnection:
    """``connect(..., robust=True)``, typed as the robust connection it is."""
    connection = await connect(settings, command, robust=True)
    assert isinstance(connection, ClusterConnection)
    return connection
