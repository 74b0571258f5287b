"""The emulator's seller events: ``GET`` and ``DELETE /v1/channel/event``.

A test or the demo injects events (``Emulator.add_events``, ``POST /_emulator/events``); they
are kept as given, so a malformed one (no ``id``, ``event`` as broken JSON text) is served as
is. ``GET /v1/channel/event?limit=N`` (1 to 1000, default 100; optional ``createdAfter``)
answers ``{"eventList": [...]}``: up to N (and at most ``event_page_cap``, 100 as JTL's
schema) visible, unacknowledged events in the order they were injected, each then hidden for
``event_visibility`` seconds, after which it comes again unless acknowledged (at-least-once,
as the API). As SCX, an event handed out ``event_max_deliveries`` times (10) and still not
acknowledged when it would come again is given up (``dead-letter`` on SCX's side): never
served again, counted in the ledger's ``given_up`` (and ``given_up_ids``).
``DELETE /v1/channel/event`` with ``{"eventIdList": [...]}`` (1 to 100 strings, else 400
with ``errorList``) acknowledges them and answers 204; an id never injected or already
acknowledged is accepted and counted.

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
    given_up: int = 0  # events dropped after their last delivery, never acknowledged
    given_up_ids: list[str] = field(default_factory=list)

    def to_json(self, *, ids: bool = True) -> dict[str, Any]:
        # Not dataclasses.asdict: it rebuilds a Counter from (key, count) pairs, counting them.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        if ids:
            data["handed_counts"] = dict(self.handed_counts)
            data["acked_counts"] = dict(self.acked_counts)
            data["given_up_ids"] = list(self.given_up_ids)
        else:
            del data["handed_counts"], data["acked_counts"], data["given_up_ids"]
        return data


class EventQueue:
    """The channel's unacknowledged seller events and what happened to them."""

    def __init__(
        self,
        files: FileStore,
        visibility: Callable[[], float],
        max_deliveries: Callable[[], int | None] = lambda: None,
        page_cap: Callable[[], int] = lambda: MAX_LIMIT,
    ) -> None:
        self._files = files
        self._visibility = visibility
        self._max_deliveries = max_deliveries
        self._page_cap = page_cap
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
        limit = min(limit, self._page_cap())
        most = self._max_deliveries()
        out: list[Any] = []
        dead: list[str] = []
        for key, held in self._pending.items():
            if len(out) >= limit:
                break
            if held.hidden_until > now or not _after(held.item, created_after):
                continue
            if most is not None and ledger.handed_counts[key] >= most:
                dead.append(key)  # delivered its last time and not acknowledged: given up
                continue
            if held.hidden_until:
                ledger.redelivered += 1
            held.hidden_until = hide_until
            ledger.handed_counts[key] += 1
            out.append(held.item)
        for key in dead:
            del self._pending[key]
            ledger.given_up += 1
            ledger.given_up_ids.append(key)
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


# One ``event`` payload per seller event type (JTL's ``SellerEventTypeList``), in the shape
# JTL's generated models require (API-FACTS.md, "Required fields per type"): test fixtures,
# the AsyncAPI examples (docs/asyncapi.yaml) and the soak's traffic are built from these.
_ORDER = {"sellerId": "4711", "orderId": "19820701"}
_PRICES = [{"id": "B2C", "quantityPriceList": [{"amount": "19.99", "currency": "EUR"}]}]
EXAMPLE_PAYLOADS: dict[str, dict[str, Any]] = {
    "System:Test": {"channel": "MYCHANNEL"},
    "System:Notification": {
        "channel": "MYCHANNEL",
        "sellerId": "4711",
        "message": "The seller's account is being reviewed.",
        "severity": "INFO",
    },
    "Seller:Order.Confirmed": {**_ORDER, "orderAccepted": True},
    "Seller:Order.Shipping": {
        **_ORDER,
        "shippingComplete": True,
        "shippingItems": [
            {
                "carrier": "DHL",
                "trackingNumber": "00340434161094042557",
                "shippedAt": "2026-11-30T11:00:00+0000",
                "orderItemIdList": [{"orderItemId": "19820701-1", "quantity": "1"}],
                "returnTracking": {"carrier": "DHL", "trackingNumber": "00340434161094042558"},
                "shippedFrom": {"city": "Hückelhoven", "country": "DE", "postcode": "41836"},
            }
        ],
    },
    "Seller:Order.Payment": {
        **_ORDER,
        "paymentComplete": True,
        "paidAt": "2026-11-30T10:00:00+0000",
    },
    "Seller:Order.Cancellation.Request": {
        "orderCancellationRequestId": "0b9e0c7e-1f3a-4c1e-9a57-2d0c3f7a1b11",
        **_ORDER,
        "orderItem": [{"orderItemId": "19820701-1", "quantity": "1"}],
    },
    "Seller:Order.Cancellation.Accepted": {
        "sellerId": "4711",
        "orderCancellationRequestId": "0b9e0c7e-1f3a-4c1e-9a57-2d0c3f7a1b11",
    },
    "Seller:Order.Cancellation.Denied": {
        "sellerId": "4711",
        "orderCancellationRequestId": "0b9e0c7e-1f3a-4c1e-9a57-2d0c3f7a1b11",
        "reason": "The parcel has left the warehouse.",
    },
    "Seller:Order.Refund": {
        "refundId": "R-1982-07",
        **_ORDER,
        "orderItem": [
            {
                "orderItemId": "19820701-1",
                "quantity": "1",
                "reason": "DAMAGED",
                "refund": "19.99",
                "refundCurrency": "EUR",
            }
        ],
    },
    "Seller:Order.Invoice": {
        "type": "INVOICE",
        **_ORDER,
        "invoiceNumber": "RE-2026-0042",
        "documentId": "doc-0042",
        "documentExpiresAt": "2026-12-30T12:00:00+0000",
    },
    "Seller:Order.ReturnReceived": {
        **_ORDER,
        "sellerReturnId": "RET-0042",
        "orderItem": [
            {
                "orderItemId": "19820701-1",
                "quantity": "1",
                "returnReason": "DOES_NOT_FIT",
                "condition": "AS_NEW",
                "acceptReturn": True,
            }
        ],
    },
    "Seller:Offer.New": {"sellerId": "4711", "offerId": 42, "priceList": _PRICES, "sku": "DOOR-1"},
    "Seller:Offer.Update": {
        "sellerId": "4711",
        "offerId": 42,
        "priceList": _PRICES,
        "sku": "DOOR-1",
    },
    "Seller:Offer.End": {"sellerId": "4711", "offerId": 42},
    "Seller:Offer.StockUpdate": {"sellerId": "4711", "offerId": 42, "quantity": "7"},
    "Seller:Offer.PriceUpdate": {"sellerId": "4711", "offerId": 42, "priceList": _PRICES},
    "Seller:Report.Request": {
        "sellerId": "4711",
        "reportType": "SELLER_INVENTORY",
        "reportId": "rep-0042",
        "startDate": "2026-11-01",
        "endDate": "2026-11-30",
    },
    "Seller:Channel.Unlinked": {
        "sellerId": "4711",
        "reason": "The seller ended the contract.",
        "unlinkedAt": "2026-11-30T12:00:00+0000",
    },
    "Seller:Meta.SellerAttributesUpdateRequest": {"sellerId": "4711"},
    "Seller:Ticket.Reply": {
        "sellerId": "4711",
        "ticketId": "CASE-01071982",
        "replyRequested": None,
        "createdAt": "2026-11-30T11:58:00+0000",
        "from": {"role": "SELLER", "name": "Support"},
        "message": "The doors are open again.",
        "attachment": [{"filename": "manual.pdf", "contentType": "application/pdf"}],
    },
}
SELLER_EVENT_TYPES: tuple[str, ...] = tuple(EXAMPLE_PAYLOADS)


def example_event(event_type: str, event_id: str | None = None) -> dict[str, Any]:
    """An ``eventList`` item of ``event_type`` in JTL's shape (a copy: change it freely)."""
    payload = orjson.loads(orjson.dumps(EXAMPLE_PAYLOADS[event_type]))
    return seller_event(
        event_id or f"ex-{event_type}", event_type, payload, created_at="2026-11-30T12:00:00+0000"
    )
