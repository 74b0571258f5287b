"""The SCX Channel API client and what it is built from.

``client`` holds the routes; ``auth`` the token flow; ``routes`` the rate-limit category of
each route; ``pacing`` (one per category) and ``breaker`` decide when a call may go; ``waits``
makes every wait end on shutdown; ``responses`` reads the API's answers; ``instrumentation`` is
how the client reports (metrics, the token check of ``/readyz``). Everything else in the worker
imports the public names from here; only tests reach into the modules, to test their parts one
by one.
"""

from worker.scx.auth import auth_request
from worker.scx.client import (
    ATTACHMENT_PATH,
    MAX_ACK_IDS,
    TICKET_PATH,
    Answered,
    Call,
    Forwarded,
    ScxClient,
    Unavailable,
    Uploaded,
    classify,
)

__all__ = [
    "ATTACHMENT_PATH",
    "MAX_ACK_IDS",
    "TICKET_PATH",
    "Answered",
    "Call",
    "Forwarded",
    "ScxClient",
    "Unavailable",
    "Uploaded",
    "auth_request",
    "classify",
]
