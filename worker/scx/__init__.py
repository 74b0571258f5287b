"""The SCX Channel API client and what it is built from.

``client`` holds the routes; ``auth`` the token flow; ``pacing`` and ``breaker`` decide when a
call may go; ``waits`` makes every wait end on shutdown; ``responses`` reads the API's answers.
Everything else in the worker imports the public names from here.
"""

from worker.scx.auth import auth_request
from worker.scx.client import TICKET_PATH, Answered, Call, Forwarded, ScxClient, classify

__all__ = [
    "TICKET_PATH",
    "Answered",
    "Call",
    "Forwarded",
    "ScxClient",
    "auth_request",
    "classify",
]
