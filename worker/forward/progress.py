"""What is done for one message of a conversation: created, which files uploaded; so a retry
does only the rest, and another message of the same conversation is never taken for it.

``ticketId`` names a conversation, not a message (``worker.forward.identity``), so every memory
here is keyed on (sellerId, ticketId, message identity). Two memories, both optional to the
worker's correctness (without them delivery is at-least-once, as the docs say), both consulted
before each step:

- ``Steps``: travels with the message. A message that leaves the worker after its ticket call
  went out (to the delay stage, to the DLQ, back to the work queue on shutdown) carries the
  header ``x-scx-progress`` = ``{"message": "<identity>", "ticket": true, "attempted": true,
  "uploaded": ["a_8c2a4b0e3f11.png"]}``; the next attempt, or a ``dlq replay``, starts from
  there. ``attempted`` says a ticket call went out whose answer was not a refusal (it may
  have created the ticket: a timeout, a 5xx after the request was read); it is what lets a
  later ``409`` count as "created by us" (``worker.forward.delivery``). A header naming another
  message (a publisher that copied headers from one message to the next) is ignored, as is a
  header that does not parse: everything is done again (at-least-once, never a skipped step on
  a guess). A header without ``message`` (written before conversations) is believed.
- ``StateRecord``: Redis (``WORKER_STATE_REDIS_URL``), one hash per conversation
  (``<WORKER_STATE_KEY_PREFIX>:<sellerId>:<ticketId>``) holding each message's fields under its
  record tag (``MessageIdentity.record_tag``, 32 hex digits): ``<tag>:ticket``, ``<tag>:id``
  (the identity itself, for whoever reads the record) and ``<tag>:file:<name>``; each write
  renews ``WORKER_STATE_TTL`` for the whole conversation. It covers what the header cannot: a
  redelivery after a kill -9, a broker restart or a lost connection, when the message comes
  back as it was first published. Fields written before conversations (``ticket``,
  ``file:<name>``, no tag) belong to no message and are ignored.

If Redis is configured but does not answer, a step is never skipped or done on a guess: the
record is tried ``RECORD_ATTEMPTS`` times, then the message goes to the delay stage like any
transient failure (``RetryLater``), carrying in its header what it did get done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import structlog

from worker.amqp import headers as h
from worker.core.errors import RetryLater
from worker.core.settings import Settings
from worker.core.side_table import open_side_table
from worker.forward.identity import MessageIdentity

if TYPE_CHECKING:
    pass

log = structlog.get_logger(__name__)

# Quick in-process retries of the record before the message goes to the delay stage.
RECORD_ATTEMPTS = 3
RECORD_WAITS = (0.2, 0.5)
# Per Redis operation: the record is a side-table, it must not hold up a message for long.
RECORD_TIMEOUT = 2.0

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


@dataclass
class Steps:
    """What is done for one message's ticket; ``header()`` is what travels with it."""

    ticket: bool = False
    uploaded: list[str] = field(default_factory=list)
    attempted: bool = False
    """A ticket call went out, its answer unknown: the ticket may exist (module docstring).
    False once ``ticket`` is known."""
    message: str | None = None
    """The identity of the message these steps are of; None until known."""

    @classmethod
    def from_headers(cls, message_headers: Mapping[str, Any] | None) -> Steps:
        raw = (message_headers or {}).get(h.PROGRESS)
        if isinstance(raw, bytes | bytearray):
            raw = bytes(raw).decode("utf-8", "replace")
        if not isinstance(raw, str):
            return cls()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("progress.header_ignored", why="not JSON")
            return cls()
        if not isinstance(data, dict):
            data = {"ticket": None}
        ticket, uploaded = data.get("ticket"), data.get("uploaded", [])
        attempted, message = data.get("attempted", False), data.get("message")
        if (
            not isinstance(ticket, bool)
            or not isinstance(attempted, bool)
            or not isinstance(message, str | None)
            or not isinstance(uploaded, list)
            or not all(isinstance(name, str) for name in uploaded)
        ):
            log.warning(
                "progress.header_ignored",
                why="not {message: str, ticket: bool, attempted: bool, uploaded: [str]}",
            )
            return cls()
        # A file cannot have been uploaded to a ticket that does not exist.
        names = list(dict.fromkeys(uploaded)) if ticket else []
        return cls(ticket, names, attempted and not ticket, message)

    def claim(self, identity: MessageIdentity) -> None:
        """Make these the steps of ``identity``: forget them if they are another message's."""
        if self.message is not None and self.message != identity.value:
            log.warning(
                "progress.header_ignored",
                why="it names another message",
                header_message=self.message,
            )
            self.ticket, self.attempted, self.uploaded = False, False, []
        self.message = identity.value

    def __bool__(self) -> bool:
        return self.ticket or self.attempted or bool(self.uploaded)

    def merge(self, ticket: bool, uploaded: Iterable[str]) -> None:
        self.ticket = self.ticket or ticket
        self.attempted = self.attempted and not self.ticket
        for name in uploaded:
            self.add_upload(name)

    def add_upload(self, filename: str) -> None:
        if filename not in self.uploaded:
            self.uploaded.append(filename)

    def header(self) -> dict[str, str]:
        """The ``x-scx-progress`` header for a copy of the message; empty when nothing is done."""
        if not self:
            return {}
        data: dict[str, Any] = {"ticket": self.ticket, "uploaded": self.uploaded}
        if self.attempted:
            data["attempted"] = True
        if self.message is not None:
            data = {"message": self.message} | data
        return {h.PROGRESS: orjson.dumps(data).decode()}


class StateRecord:
    """The progress record in Redis; see the module docstring for keys and failure handling."""

    def __init__(self, settings: Settings, *, sleep: Sleep = asyncio.sleep) -> None:
        assert settings.worker_state_redis_url is not None
        # Our own retries (below) decide; redis-py's default would add seconds of its own.
        self._redis, self._failures = open_side_table(
            settings.worker_state_redis_url, RECORD_TIMEOUT
        )
        self._where = settings.state_redis_url_redacted
        self._prefix = settings.worker_state_key_prefix
        self._ttl = settings.worker_state_ttl
        self._sleep = sleep

    async def aclose(self) -> None:
        await self._redis.aclose()

    def key(self, seller_id: str, ticket_id: str) -> str:
        """The conversation's hash. sellerId is ^\\w{1,50}$: the first colon after the prefix
        ends it."""
        return f"{self._prefix}:{seller_id}:{ticket_id}"

    async def recall(
        self, seller_id: str, ticket_id: str, message: MessageIdentity
    ) -> tuple[bool, list[str]]:
        """(ticket created?, files uploaded) as recorded for ``message``; ``RetryLater`` if
        Redis is away. Other messages of the conversation do not count."""
        key = self.key(seller_id, ticket_id)
        fields = await self._do("read", lambda: self._redis.hkeys(key))
        mine = f"{message.record_tag}:"
        found = [
            name.removeprefix(mine)
            for name in (f.decode() if isinstance(f, bytes) else f for f in fields)
            if name.startswith(mine)
        ]
        names = [f.removeprefix("file:") for f in found if f.startswith("file:")]
        return "ticket" in found, names

    async def ticket_created(
        self, seller_id: str, ticket_id: str, message: MessageIdentity
    ) -> None:
        tag = message.record_tag
        await self._write(
            self.key(seller_id, ticket_id), {f"{tag}:ticket": "1", f"{tag}:id": message.value}
        )

    async def file_uploaded(
        self, seller_id: str, ticket_id: str, message: MessageIdentity, filename: str
    ) -> None:
        await self._write(
            self.key(seller_id, ticket_id), {f"{message.record_tag}:file:{filename}": "1"}
        )

    async def _write(self, key: str, fields: dict[str, str]) -> None:
        async def write() -> Any:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
                pipe.expire(key, self._ttl)
                return await pipe.execute()

        await self._do("write", write)

    async def _do(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(1, RECORD_ATTEMPTS + 1):
            try:
                return await operation()
            except self._failures as exc:
                error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "progress.record_unavailable",
                    operation=what,
                    attempt=attempt,
                    redis=self._where,
                    error=error,
                )
                if attempt == RECORD_ATTEMPTS:
                    raise RetryLater(
                        0,
                        f"progress record (Redis) unavailable: {type(exc).__name__}",
                        {"status": None, "errorList": []},
                    ) from None
                await self._sleep(RECORD_WAITS[min(attempt, len(RECORD_WAITS)) - 1])
        raise AssertionError("unreachable")
