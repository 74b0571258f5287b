"""Conversations as the tests write and read them: messages of one ticket, their files."""

from __future__ import annotations

import base64
import random

import orjson

from worker.emulator import Emulator
from worker.emulator.tickets import Conversation
from worker.forward.identity import MessageIdentity
from worker.ops.samples import valid_event

SELLER = "seller_1"


def message(
    ticket: str,
    event_id: str,
    minute: int,
    files: dict[str, bytes] | None = None,
    *,
    role: str = "BUYER",
    text: str | None = None,
) -> bytes:
    """One message of conversation ``ticket``: its own event id, ``createdAt`` and files."""
    body = valid_event(1, random.Random(minute))
    body["id"] = event_id
    body["data"].update(
        ticket_id=ticket,
        created_at=f"2026-11-27T10:{minute:02d}:00Z",
        author={"role": role, "name": "Erika"},
        message=text or f"message {event_id}",
        attachments=[
            {
                "filename": name,
                "content_type": "text/plain",
                "content_base64": base64.b64encode(data).decode(),
            }
            for name, data in (files or {}).items()
        ],
    )
    return orjson.dumps(body)


def conversation(emulator: Emulator, ticket: str) -> Conversation:
    found = emulator.tickets.get((SELLER, ticket))
    assert found is not None, f"no conversation {ticket}"
    return found


def upload_name(name: str, event_id: str) -> str:
    stem, _, extension = name.rpartition(".")
    return f"{stem}_{MessageIdentity(event_id, 'event').discriminator}.{extension}"


def files_of(emulator: Emulator, ticket: str) -> dict[str, bytes]:
    return {
        name: stored.data
        for (seller, ticket_id, name), stored in emulator.files.files.items()
        if (seller, ticket_id) == (SELLER, ticket)
    }
