"""Bounded label values: what turns an error text or an outside string into a metric label.

Every distinct label value is a new time series, so nothing from outside becomes a label
as it is:

=====================  ==============================================================
``reason_label``       an error text as a short class: ``http_503``, ``timeout``,
                       ``connection``, ``circuit_open``, ``other``; a failed token
                       refresh (``/v1/auth`` in the text) with an ``auth_`` prefix
``event_type_label``   an SCX event type as itself, for the first ``MAX_EVENT_TYPES``
                       that look like one; ``other`` past that, ``invalid`` if it is none
=====================  ==============================================================
"""

from __future__ import annotations

import re

# SCX event types come from outside: a label value per type is fine for the few dozen that
# exist ("Seller:Ticket.Reply"), not for whatever a broken event carries.
_EVENT_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,30}:[A-Za-z0-9.]{1,60}")
MAX_EVENT_TYPES = 50
_HTTP_STATUS = re.compile(r"\bhttp (\d{3})\b")


def reason_label(text: str) -> str:
    """A short, bounded label for an error text (see the module docstring)."""
    lowered = text.lower()
    prefix = "auth_" if "/v1/auth" in lowered else ""
    if lowered.startswith("circuit open"):
        return "circuit_open"
    if status := _HTTP_STATUS.search(lowered):
        return f"{prefix}http_{status.group(1)}"
    if "timeout" in lowered or "timed out" in lowered:
        return f"{prefix}timeout"
    if "connection" in lowered:
        return f"{prefix}connection"
    return f"{prefix}other"


_event_types: set[str] = set()


def event_type_label(event_type: object) -> str:
    """The type as a label: itself if it looks like an SCX type and fewer than
    ``MAX_EVENT_TYPES`` were seen, ``other`` past that, ``invalid`` if it is not one."""
    if not isinstance(event_type, str) or _EVENT_TYPE.fullmatch(event_type) is None:
        return "invalid"
    if event_type in _event_types:
        return event_type
    if len(_event_types) >= MAX_EVENT_TYPES:
        return "other"
    _event_types.add(event_type)
    return event_type
