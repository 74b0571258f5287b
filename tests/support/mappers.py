"""Mapper hooks used by tests through ``--mapper tests.support.mappers:<name>``."""

from __future__ import annotations

import os
from typing import Any


def crash_on_poison(event: dict[str, Any]) -> dict[str, Any]:
    """Kill the whole process on ``{"poison": true}``, as a native-code bug would."""
    if event.get("poison"):
        os._exit(70)
    return {
        "sellerId": "shop_1",
        "ticketId": str(event["case"]),
        "topic": "QUESTION",
        "createdAt": "2024-01-01T12:00:00Z",
        "from": {"role": "BUYER"},
        "subject": "subject",
        "message": "message",
    }
