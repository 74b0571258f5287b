"""The emulator's conversations: a ticket is a conversation that holds its messages.

SCX's ``ticketId`` names a conversation (API-FACTS.md): the buyer's question, the seller's
reply (``Seller:Ticket.Reply``), the buyer's answer, a note of the marketplace's staff all
carry it, each a ``POST /v1/channel/ticket`` of its own (the seller's reply reaches the
emulator as an injected seller event instead). The API has no message id, so the emulator,
like the real one would have to, tells a *repeat* of a message from a new one by its body:
the same JSON body (keys in any order) is the same message.

What a post does to the ledger (``Conversations.post``):

=========================================  =================================================
the post                                   recorded as
=========================================  =================================================
the first of its (sellerId, ticketId)      a new conversation with one message
another body for a known conversation      a follow-up: one more message
a body the conversation already holds      a repeat: that message's ``posts`` grows (and
                                           the emulator's ``duplicates``); or, with
                                           ``conflict_on_repeated_message``, a 409
=========================================  =================================================

With ``conflict_on_duplicate`` every post to a known conversation is answered 409, follow-ups
included: the reading of the API under which a ``409`` proves nothing about *this* message.

``GET /_emulator/tickets`` (and ``GET /_tickets``) shows each conversation: its messages in
arrival order (with ``createdAt``, author, text, attachment names, how often each was
posted or refused), the seller's replies, and the files stored for it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from worker.emulator.files import FileStore

TicketKey = tuple[str, str]  # (sellerId, ticketId)
Posted = Literal["new", "follow_up", "repeat"]


def message_digest(body: dict[str, Any]) -> str:
    """The same message is the same JSON body, whatever the order of its keys."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass
class Message:
    body: dict[str, Any]
    digest: str
    accepted_at: float
    posts: int = 1
    """Accepted posts of this body: above 1, the client sent the same message again."""
    conflicts: int = 0
    """Posts of this body answered 409."""

    def to_json(self) -> dict[str, Any]:
        body = self.body
        return {
            "createdAt": body.get("createdAt"),
            "from": body.get("from"),
            "subject": body.get("subject"),
            "message": body.get("message"),
            "replyRequested": body.get("replyRequested", True),
            "attachment": [item.get("filename") for item in body.get("attachment") or ()],
            "posts": self.posts,
            "conflicts": self.conflicts,
            "acceptedAt": round(self.accepted_at, 3),
        }


@dataclass
class Conversation:
    seller_id: str
    ticket_id: str
    messages: list[Message] = field(default_factory=list)
    replies: list[dict[str, Any]] = field(default_factory=list)
    """``Seller:Ticket.Reply`` events injected for this conversation, as given."""
    conflicts: int = 0
    """Posts refused with 409, repeats and follow-ups alike."""

    @property
    def names(self) -> frozenset[str]:
        """Every attachment filename any message names: what uploads may store."""
        return frozenset(
            item["filename"] for m in self.messages for item in m.body.get("attachment") or ()
        )

    def find(self, digest: str) -> Message | None:
        return next((m for m in self.messages if m.digest == digest), None)


class Conversations:
    """The ledger of conversations by (sellerId, ticketId); see the module docstring."""

    def __init__(self) -> None:
        self._by_key: dict[TicketKey, Conversation] = {}

    def __contains__(self, key: TicketKey) -> bool:
        return key in self._by_key

    def get(self, key: TicketKey) -> Conversation | None:
        return self._by_key.get(key)

    def names_of(self, key: TicketKey) -> frozenset[str] | None:
        """The filenames the conversation names; None if no message of it was accepted."""
        conversation = self._by_key.get(key)
        return None if conversation is None else conversation.names

    def repeat_of(self, body: dict[str, Any]) -> Message | None:
        """The message ``body`` repeats, if its conversation holds it already."""
        conversation = self._by_key.get((body["sellerId"], body["ticketId"]))
        return None if conversation is None else conversation.find(message_digest(body))

    def refused(self, body: dict[str, Any]) -> None:
        """Count a post answered 409 (its conversation exists)."""
        conversation = self._by_key[(body["sellerId"], body["ticketId"])]
        conversation.conflicts += 1
        if (message := conversation.find(message_digest(body))) is not None:
            message.conflicts += 1

    def post(self, body: dict[str, Any], at: float) -> Posted:
        """Record an accepted post of a (schema-valid) ticket body."""
        key = (body["sellerId"], body["ticketId"])
        digest = message_digest(body)
        conversation = self._by_key.get(key)
        if conversation is None:
            self._by_key[key] = Conversation(key[0], key[1], [Message(body, digest, at)])
            return "new"
        if (message := conversation.find(digest)) is not None:
            message.posts += 1
            return "repeat"
        conversation.messages.append(Message(body, digest, at))
        return "follow_up"

    def add_reply(self, event: Any) -> None:
        """Keep a ``Seller:Ticket.Reply`` (an injected seller event) with its conversation."""
        if not isinstance(event, dict) or event.get("type") != "Seller:Ticket.Reply":
            return
        reply = event.get("event")
        if not isinstance(reply, dict):
            return
        key = (str(reply.get("sellerId")), str(reply.get("ticketId")))
        conversation = self._by_key.setdefault(key, Conversation(*key))
        conversation.replies.append(reply)

    def clear(self) -> None:
        self._by_key.clear()

    def to_json(self, files: FileStore) -> list[dict[str, Any]]:
        return [
            {
                "sellerId": c.seller_id,
                "ticketId": c.ticket_id,
                "messages": [m.to_json() for m in c.messages],
                "replies": c.replies,
                "conflicts": c.conflicts,
                "files": [
                    f.to_json() | {"stores": files.stores[key]}
                    for key, f in files.files.items()
                    if key[:2] == (c.seller_id, c.ticket_id)
                ],
            }
            for c in self._by_key.values()
        ]
