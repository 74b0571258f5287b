"""The emulator's seller events: ``GET`` and ``DELETE /v1/channel/event``.

A test or the demo injects events (``Emulator.add_events``, ``POST /_emulator/events``); they
are kept as given, so a malformed one (no ``id``, ``event`` as broken JSON text) is served as
is. ``GET /v1/channel/event?limit=N`` (1 to 1000, default 100; optional ``createdAfter``)
answers ``{"eventList": [...]}``: up to N visible, unacknowledged events in the order they
were injected, each then hidden for ``event_visibility`` seconds, after which it comes again
unless acknowledged (at-least-once, as the API). ``DELETE /v1/channel/event`` with
``{"eventIdList": [...]}`` (1 to 100 strings, else 400 with ``errorList``) acknowledges them
and answers 204; an id never injected or already acknowledged is accepted and counted.

The ledger (``EventLedger``) counts per id how often each was handed out and acknowledged,
cheap for tens of thousands of events.
"""

from __future__ import annotations

import base64
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from worker.emulator.answers import fail
from worker.emulator.files import FileStore

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
MAX_ACK_IDS = 100


@dataclass
class _Held:
    item: Any
    hidden_until: float = 0.0


@dataclass
class EventLedger:
    injected: int = 0
    polls: int = 0
    handed_out: int = 0  # items in answers, repeats included
    redelivered: int = 0  # items handed out again (not acknowledged in time)
    ack_calls: int = 0
    acked_total: int = 0  # ids acknowledged for the first time
    acked_again: int = 0  # ids acknowledged that already were
    unknown_acks: int = 0  # ids never injected
    handed_counts: Counter[str] = field(default_factory=Counter)
    acked_counts: Counter[str] = field(default_factory=Counter)

    def to_json(self, *, ids: bool = True) -> dict[str, Any]:
        # Not dataclasses.asdict: it rebuilds a Counter from (key, count) pairs, counting them.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        if ids:
            data["handed_counts"] = dict(self.handed_counts)
            data["acked_counts"] = dict(self.acked_counts)
        else:
            del data["handed_counts"], data["acked_counts"]
        return data


class EventQueue:
    """The channel's unacknowledged seller events and what happened to them."""

    def __init__(self, files: FileStore, visibility: Callable[[], float]) -> None:
        self._files = files
        self._visibility = visibility
        self._pending: dict[str, _Held] = {}  # insertion order is the order served
        self._acked: set[str] = set()
        self._serial = 0
        self.ledger = EventLedger()

    @property
    def pending(self) -> int:
        """Events not acknowledged yet (hidden or visible)."""
        return len(self._pending)

    def add(self, events: list[Any], files: list[dict[str, Any]] | None = None) -> list[str]:
        """Store events as given (any JSON) and files for replies; returns their keys.

        A file is ``{"sellerId", "ticketId", "filename", "contentType", "data"}`` with
        ``data`` as bytes or, over HTTP, base64 text.
        """
        if not isinstance(events, list):
            raise ValueError("events must be a list")
        for spec in files or ():
            data = spec.get("data", b"") if isinstance(spec, dict) else None
            if isinstance(data, str):
                data = base64.b64decode(data, validate=True)
            if not isinstance(data, bytes):
                raise ValueError("each file needs data (base64 text)")
            try:
                key = (str(spec["sellerId"]), str(spec["ticketId"]), str(spec["filename"]))
            except KeyError as exc:
                raise ValueError(f"a file needs sellerId, ticketId and filename ({exc})") from None
            self._files.put(*key, str(spec.get("contentType", "application/octet-stream")), data)
        keys = []
        for item in events:
            event_id = item.get("id") if isinstance(item, dict) else None
            if not isinstance(event_id, str) or not event_id or event_id in self._pending:
                # Not acknowledgeable (or a second copy): kept under a key of its own.
                self._serial += 1
                event_id = f"\x00unkeyed-{self._serial}"
            self._pending[event_id] = _Held(item)
            keys.append(event_id)
        self.ledger.injected += len(events)
        return keys

    def clear(self) -> None:
        self._pending.clear()
        self._acked.clear()
        self.ledger = EventLedger()

    def poll(self, limit: int, created_after: datetime | None = None) -> list[Any]:
        now = time.monotonic()
        hide_until = now + self._visibility()
        ledger = self.ledger
        ledger.polls += 1
        out: list[Any] = []
        for key, held in self._pending.items():
            if len(out) >= limit:
                break
            if held.hidden_until > now or not _after(held.item, created_after):
                continue
            if held.hidden_until:
                ledger.redelivered += 1
            held.hidden_until = hide_until
            ledger.handed_counts[key] += 1
            out.append(held.item)
        ledger.handed_out += len(out)
        return out

    def acknowledge(self, ids: list[str]) -> None:
        ledger = self.ledger
        ledger.ack_calls += 1
        for event_id in ids:
            if self._pending.pop(event_id, None) is not None:
                self._acked.add(event_id)
                ledger.acked_total += 1
            elif event_id in self._acked:
                ledger.acked_again += 1
            else:
                ledger.unknown_acks += 1
            ledger.acked_counts[event_id] += 1

    async def answer_get(self, request: web.Request, headers: dict[str, str]) -> web.Response:
        raw_limit = request.query.get("limit", str(DEFAULT_LIMIT))
        try:
            limit = int(raw_limit)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            text = (f"limit muss 1 bis {MAX_LIMIT} sein", f"limit must be 1 to {MAX_LIMIT}")
            return fail(request, 400, "VAL100", text, headers)
        created_after = None
        if "createdAfter" in request.query:
            created_after = _date_time(request.query["createdAfter"])
            if created_after is None:
                text = "createdAfter ist kein Datum", "createdAfter is not a date-time"
                return fail(request, 400, "VAL100", text, headers)
        events = self.poll(limit, created_after)
        return web.Response(
            body=orjson.dumps({"eventList": events}),
            headers=headers,
            content_type="application/json",
        )

    async def answer_delete(self, request: web.Request, headers: dict[str, str]) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        ids = body.get("eventIdList") if isinstance(body, dict) else None
        if (
            not isinstance(ids, list)
            or not 1 <= len(ids) <= MAX_ACK_IDS
            or not all(isinstance(i, str) and i for i in ids)
        ):
            text = (
                f"eventIdList muss 1 bis {MAX_ACK_IDS} Ids enthalten",
                f"eventIdList must hold 1 to {MAX_ACK_IDS} ids",
            )
            return fail(request, 400, "VAL100", text, headers)
        self.acknowledge(ids)
        return web.Response(status=204, headers=headers)


def ticket_reply(
    event_id: str,
    *,
    seller_id: str,
    ticket_id: str,
    message: str,
    created_at: str = "2026-11-30T12:00:00+00:00",
    role: str = "SELLER",
    name: str | None = None,
    reply_requested: bool = True,
    attachments: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """A ``Seller:Ticket.Reply`` item as ``GET /v1/channel/event`` lists it."""
    author: dict[str, Any] = {"role": role}
    if name is not None:
        author["name"] = name
    return {
        "id": event_id,
        "createdAt": created_at,
        "clientVersion": "1.0.0",
        "type": "Seller:Ticket.Reply",
        "event": {
            "sellerId": seller_id,
            "ticketId": ticket_id,
            "replyRequested": reply_requested,
            "createdAt": created_at,
            "from": author,
            "message": message,
            "attachment": [{"filename": f, "contentType": t} for f, t in attachments],
        },
    }


def seller_event(
    event_id: str, event_type: str, payload: dict[str, Any], *, created_at: str | None = None
) -> dict[str, Any]:
    """Any other seller event as ``GET /v1/channel/event`` lists it."""
    return {
        "id": event_id,
        "createdAt": created_at or "2026-11-30T12:00:00+00:00",
        "clientVersion": "1.0.0",
        "type": event_type,
        "event": payload,
    }


def _after(item: Any, created_after: datetime | None) -> bool:
    if created_after is None or not isinstance(item, dict):
        return True
    created = _date_time(item.get("createdAt"))
    return created is None or created > created_after


def _date_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.upper())
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None
