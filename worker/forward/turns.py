"""One conversation at a time: the order in which one process sends a conversation's messages.

``ticketId`` names a conversation (``worker.forward.identity``), and SCX shows its messages in
the order they arrive. What the worker promises:

- **in one process**, messages of one conversation (same sellerId and ticketId) are sent one
  after the other, never interleaved (the ticket call and the uploads of one message are done
  before the next message's ticket call), and when several wait, the one with the earliest
  ``createdAt`` goes next (ties, and a ``createdAt`` that does not parse, in arrival order);
- a message that is already being sent is not overtaken: one with an earlier ``createdAt``
  that arrives while it is sent comes after it;
- **across replicas, and across the delay stage**, nothing is promised: a message delayed by
  a 503 comes back after the follow-ups that were sent meanwhile, and two replicas may send
  two messages of one conversation at the same time. Each message keeps its own
  ``createdAt``, which is what SCX and the seller order a conversation by.

Memory is bounded by the messages in flight: a conversation's entry exists only while one of
its messages is being sent or waits, and at most ``AMQP_PREFETCH`` messages are held at once.
Waiting for a turn ends with ``ShuttingDown`` when the worker stops, so the message is handed
back untouched.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime

from worker.core.errors import ShuttingDown

Conversation = tuple[str, str]  # (sellerId, ticketId)


@dataclass(order=True)
class _Waiter:
    when: float
    seq: int
    granted: asyncio.Future[object] = field(compare=False)


@dataclass
class _Line:
    """A conversation in this process: whether a message holds its turn, and who waits."""

    busy: bool = False
    waiting: list[_Waiter] = field(default_factory=list)


class Turns:
    """Per-conversation turns (module docstring); one per forwarder."""

    def __init__(self, stopping: asyncio.Event) -> None:
        self._stopping = stopping
        self._lines: dict[Conversation, _Line] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        """Conversations with a message in flight (bounded by the prefetch)."""
        return len(self._lines)

    @asynccontextmanager
    async def turn(self, conversation: Conversation, created_at: str) -> AsyncIterator[None]:
        """Hold the conversation's turn for the block; wait for it first if it is taken."""
        line = self._lines.setdefault(conversation, _Line())
        if line.busy:
            await self._wait(conversation, line, _order(created_at))
        else:
            line.busy = True
        try:
            yield
        finally:
            self._pass_on(conversation, line)

    async def _wait(self, conversation: Conversation, line: _Line, when: float) -> None:
        waiter = _Waiter(when, next(self._seq), asyncio.get_running_loop().create_future())
        heapq.heappush(line.waiting, waiter)
        stop: asyncio.Future[object] = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({waiter.granted, stop}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self._leave(conversation, line, waiter)
            raise
        finally:
            stop.cancel()
        if not waiter.granted.done():
            self._leave(conversation, line, waiter)
            raise ShuttingDown

    def _leave(self, conversation: Conversation, line: _Line, waiter: _Waiter) -> None:
        """A waiter gives up: out of the queue, or, if the turn was just handed to it, on."""
        if waiter.granted.done() and not waiter.granted.cancelled():
            # The turn is ours, but the block will not run to release it: pass it on.
            self._pass_on(conversation, line)
            return
        waiter.granted.cancel()
        line.waiting.remove(waiter)
        heapq.heapify(line.waiting)

    def _pass_on(self, conversation: Conversation, line: _Line) -> None:
        self._grant_next(line)
        if not line.busy and not line.waiting:
            self._lines.pop(conversation, None)

    def _grant_next(self, line: _Line) -> None:
        while line.waiting:
            waiter = heapq.heappop(line.waiting)
            if not waiter.granted.done():
                waiter.granted.set_result(None)
                return  # busy stays True: the turn goes straight to the waiter
        line.busy = False


def _order(created_at: str) -> float:
    try:
        moment = datetime.fromisoformat(created_at)
    except ValueError:
        return math.inf
    return moment.timestamp() if moment.tzinfo is not None else math.inf
