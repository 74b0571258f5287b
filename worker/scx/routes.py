"""Which rate-limit window a route counts against: JTL's table of route categories, in one place.

JTL publishes one window **per route pattern**, per channel credential, shared by every replica
(guides "Rate Limits" and "Rate limiting"; API-FACTS.md). Every answer's ``X-RateLimit-*``
headers describe the window of *its* category, so the client keeps one pacing state per
category (``worker.scx.client``) and each learns only from its own category's answers: a 429
from the event routes pauses the event routes, not the tickets.

=====================  ======================================  =========  ==========
category               route pattern (most specific wins)      requests   per
=====================  ======================================  =========  ==========
``default``            every other route, ``/v1/auth`` among   10         60 s
``channel``            ``/v{n}/channel*`` (tickets, uploads,   60         60 s
                       downloads)
``order``              ``/v{n}/channel/order*``                600        60 s
``event``              ``/v{n}/channel/event*`` (seller        240        60 s
                       events: polls and acknowledgements)
``offer``              ``/v{n}/channel/offer*``                1,500      60 s
``attribute_category`` ``/v{n}/channel/attribute/category*``   86,400     86,400 s
``attribute_global``   ``/v{n}/channel/attribute/global*``,    10         3,600 s
                       ``/v{n}/channel/categories*``
=====================  ======================================  =========  ==========

Settings override a category's requests per minute (``worker.core.settings``):
``SCX_MAX_REQUESTS_PER_MINUTE`` is the ``channel`` category (as it always was),
``SCX_EVENT_REQUESTS_PER_MINUTE``, ``SCX_ORDER_REQUESTS_PER_MINUTE``,
``SCX_OFFER_REQUESTS_PER_MINUTE`` and ``SCX_DEFAULT_REQUESTS_PER_MINUTE`` the others; 0 turns
a category's pacing off (a 429 still pauses it). The emulator reads the same table from its
own copy (``worker.emulator.limits``): it imports nothing of the client.
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

Category = Literal[
    "default", "channel", "order", "event", "offer", "attribute_category", "attribute_global"
]


class Window(NamedTuple):
    """A category's documented window: ``limit`` requests per ``interval`` seconds."""

    limit: int
    interval: float

    @property
    def per_minute(self) -> float:
        return self.limit * 60.0 / self.interval


# Pattern (after ``/v<version>``) -> category and JTL's production window. A pattern ending in
# ``*`` matches any path that starts with it; the longest matching pattern wins.
PATTERNS: tuple[tuple[str, Category], ...] = (
    ("/channel*", "channel"),
    ("/channel/order*", "order"),
    ("/channel/event*", "event"),
    ("/channel/offer*", "offer"),
    ("/channel/attribute/category*", "attribute_category"),
    ("/channel/attribute/global*", "attribute_global"),
    ("/channel/categories*", "attribute_global"),
)
WINDOWS: dict[Category, Window] = {
    "default": Window(10, 60.0),
    "channel": Window(60, 60.0),
    "order": Window(600, 60.0),
    "event": Window(240, 60.0),
    "offer": Window(1500, 60.0),
    "attribute_category": Window(86_400, 86_400.0),
    "attribute_global": Window(10, 3600.0),
}
_VERSION = re.compile(r"^/v\d+(?=/|$)")
# Longest first, so the first match is the most specific.
_BY_LENGTH = sorted(PATTERNS, key=lambda pattern: len(pattern[0]), reverse=True)


def category_of(path: str) -> Category:
    """The category of a request path (``/v1/channel/event`` -> ``event``)."""
    version = _VERSION.match(path)
    if version is None:
        return "default"
    rest = path[version.end() :]
    for pattern, category in _BY_LENGTH:
        if rest.startswith(pattern.removesuffix("*")):
            return category
    return "default"
