"""Which message this is: the one definition of a message's identity, and what derives from it.

SCX's Ticket has no message id: ``ticketId`` names a *conversation* (the buyer's question, the
seller's reply, the buyer's answer, a note from the marketplace's staff all share it). So the
worker tells the messages of one conversation apart by an identity of its own, chosen in this
order, the first that the message has:

======================  ==========================  ===========================================
source                  where it is read             why it is trusted
======================  ==========================  ===========================================
``event``               the CloudEvents ``id``       the producer's own name for *this* event;
                        (``ce-id`` header, or the    unique per source by the specification,
                        body's ``id``)               and it survives any re-publishing (a
                                                     bridge, a shovel, a replay tool) because it
                                                     is part of the event, not of the envelope
``amqp``                the AMQP ``message_id``      set by the publisher per message; kept on
                        property                     every copy the worker makes (delay stage,
                                                     DLQ, replay), but a re-publisher outside
                                                     the worker may drop or renew it: second
``body``                ``sha256:`` + the SHA-256    always there and the same on every copy,
                        of the body                  since no copy changes the body; two
                                                     messages with byte-identical bodies are one
                                                     message (the seller would see the same
                                                     text twice otherwise)
======================  ==========================  ===========================================

Everything that remembers work keys on (sellerId, ticketId, identity): the ``x-scx-progress``
header names its message, the Redis record keeps one set of fields per identity inside the
conversation's hash, log lines carry it as ``message_id``, outcome events as
``data.message_identity``, dead-lettered copies as ``x-scx-message-id``. Upload names carry a
discriminator derived from it (``worker.forward.attachments.names``), so two messages of one
conversation never upload the same filename and the same message always uploads the same.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

IdentitySource = Literal["event", "amqp", "body"]

# Hex digits of the identity's digest in an upload name: 48 bits keep names short enough for a
# seller to read the sender's stem, and two messages of one conversation collide with odds
# of n^2 / 2^49 (about 1 in 5.6e10 for a conversation of 100 messages).
DISCRIMINATOR_HEX = 12
# Hex digits of the digest that names a message inside the conversation's Redis hash: 128 bits,
# so no two messages of any conversation ever share their progress.
RECORD_TAG_HEX = 32


@dataclass(frozen=True, slots=True)
class MessageIdentity:
    """One message of a conversation, as the worker names it (module docstring)."""

    value: str
    source: IdentitySource

    @property
    def digest(self) -> str:
        """SHA-256 of ``value`` (hex): fixed length and alphabet, whatever ``value`` holds."""
        return hashlib.sha256(self.value.encode("utf-8", "surrogatepass")).hexdigest()

    @property
    def discriminator(self) -> str:
        """What this message's upload names carry after the sender's stem (``\\w`` only)."""
        return self.digest[:DISCRIMINATOR_HEX]

    @property
    def record_tag(self) -> str:
        """The prefix of this message's fields in the conversation's progress record."""
        return self.digest[:RECORD_TAG_HEX]


def message_identity(
    event_id: str | None, amqp_message_id: str | None, body: bytes
) -> MessageIdentity:
    """The identity of a message with this CloudEvents ``id``, AMQP ``message_id`` and body."""
    if event_id:
        return MessageIdentity(event_id, "event")
    if amqp_message_id:
        return MessageIdentity(amqp_message_id, "amqp")
    return MessageIdentity(f"sha256:{hashlib.sha256(body).hexdigest()}", "body")
