"""The example ticket of JTL's "Create Ticket" reference page (create-ticket.seed.txt), shared
by the tests in both input shapes. Copy before changing (``copy.deepcopy``)."""

from __future__ import annotations

from typing import Any

SEED_TICKET: dict[str, Any] = {
    "sellerId": "4711",
    "ticketId": "CASE-01071982",
    "topic": "QUESTION",
    "createdAt": "2023-11-07T05:31:56Z",
    "from": {"role": "BUYER", "name": "Dave"},
    "subject": "Pod bay door seems to be locked.",
    "message": "Open the pod bay doors HAL.",
    "reference": {"type": "ORDERID", "id": "19820701"},
    "replyRequested": True,
    "attachment": [{"filename": "RedDot.png", "contentType": "image/png"}],
}

# The same ticket as the `data` of a marketplace event, in the event's own spellings.
SEED_EVENT_DATA: dict[str, Any] = {
    "seller_id": "4711",
    "ticket_id": "CASE-01071982",
    "topic": "question",
    "created_at": "2023-11-07T05:31:56Z",
    "author": {"role": "buyer", "name": "Dave"},
    "subject": "Pod bay door seems to be locked.",
    "message": "Open the pod bay doors HAL.",
    "reference": {"type": "order_id", "id": "19820701"},
    "attachments": [{"filename": "RedDot.png", "content_type": "image/png"}],
}
