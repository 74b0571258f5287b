"""Outcome events as a marketplace reads them: the keys to bind, the SDK's parse, the data."""

from __future__ import annotations

from typing import Any

from aio_pika.abc import AbstractIncomingMessage
from cloudevents.core.bindings import rabbitmq
from cloudevents.core.v1.event import CloudEvent

from worker.forward.outcomes import DEAD_LETTERED, FORWARDED

OUTCOME_KEYS = (FORWARDED, DEAD_LETTERED)


def read_outcome(message: AbstractIncomingMessage) -> CloudEvent:
    """Parse an outcome with the SDK, which checks every required attribute."""
    structured = rabbitmq.RabbitMQMessage(
        headers={}, content_type=message.content_type, body=message.body
    )
    event = rabbitmq.from_structured_event(structured)
    assert message.message_id == event.get_id()
    assert message.type == event.get_type()
    return event


def data_of(event: CloudEvent) -> dict[str, Any]:
    data = event.get_data()
    assert isinstance(data, dict)
    return data
