"""Every way handling a message can fail, and what the worker does about it.

::

    ForwarderError
    ├── MessageError            this message can never succeed: dead-letter it, then ack
    │   ├── MalformedMessage    kind "malformed": the body is not a UTF-8 JSON object
    │   ├── InvalidTicket       kind "invalid":   a JSON object that is not a valid ticket
    │   ├── TicketRejected      kind "rejected":  the API answered a non-retryable 4xx
    │   │   └── UploadRejected                    ... to an attachment upload; the ticket
    │   │                                         exists, the detail says which files made it
    │   └── RetriesExhausted    kind "exhausted": transient failures went on for longer than
    │                                             WORKER_RETRY_MAX_AGE (or no delay stage)
    ├── RetryLater              transient failures outlasted the in-process budget: park the
    │                           message in a delay queue (the consumer decides, by its age)
    ├── ShuttingDown            the worker stopped before this message was sent: return it
    ├── RequestRejected         a non-ticket call (event poll or ack) got a non-retryable 4xx:
    │                           the events bridge logs it and tries again later
    ├── TransientError          worth another try (408/425/429/5xx, timeout, connection error);
    │   │                       never leaves worker.scx: the retry loop turns it into a success
    │   │                       or into RetryLater
    │   └── CircuitOpen         the breaker holds every call back for longer than the budget
    └── FatalError              the worker cannot go on: stop consuming, return the message
        └── CredentialsRejected the refresh token was refused by POST /v1/auth

The consumer settles a message in exactly one place (``Forwarder._settle``) by matching on
these types. Details carried here end up in logs and dead-letter headers, so no exception
in this module may hold a token or the refresh token.
"""

from __future__ import annotations

from typing import Any, Literal

ErrorKind = Literal["malformed", "invalid", "rejected", "exhausted"]

# Exit codes of `scx-forwarder run` (a contract with supervisors and deploy scripts).
EXIT_OK = 0  # stopped by SIGTERM/SIGINT after draining
EXIT_FAILED = 1  # could not start or run: broker unreachable, topology mismatch
EXIT_CONFIG = 2  # bad configuration
EXIT_CREDENTIALS = 3  # the API rejected the refresh token


class ForwarderError(Exception):
    """Base of every error the forwarder raises on purpose."""


class MessageError(ForwarderError):
    """A message that will never succeed; ``detail`` becomes the ``x-error-detail`` header."""

    kind: ErrorKind
    event_id: str | None = None
    """The message's CloudEvents ``id``, once decoding got that far (worker.forward.envelope)."""

    def __init__(self, summary: str, detail: dict[str, Any], *, attempts: int = 0) -> None:
        super().__init__(summary)
        self.summary = summary
        self.detail = detail
        self.attempts = attempts
        """Calls made to the API for this delivery (0 when it never got that far)."""


class MalformedMessage(MessageError):
    kind = "malformed"


class InvalidTicket(MessageError):
    kind = "invalid"


class TicketRejected(MessageError):
    kind = "rejected"

    def __init__(self, status: int, error_list: list[Any]) -> None:
        super().__init__(
            f"API rejected the ticket with HTTP {status}",
            {"status": status, "errorList": error_list},
        )
        self.status = status
        self.error_list = error_list


class UploadRejected(TicketRejected):
    """A non-retryable 4xx to ``POST /v1/channel/ticket/attachment`` for ``filename``.

    The client raises it for one file; the consumer gathers every file's outcome and
    dead-letters the message with one made by ``settled``, whose ``detail`` says that the
    ticket exists, which files were uploaded and which were refused (with the API's
    ``errorList`` each).
    """

    def __init__(self, status: int, error_list: list[Any], *, filename: str) -> None:
        super().__init__(status, error_list)
        self.filename = filename
        self.summary = f"API rejected the upload of {filename} with HTTP {status}"
        self.args = (self.summary,)

    def settled(self, summary: str, detail: dict[str, Any], attempts: int) -> UploadRejected:
        """The same refusal, with the message's whole story as summary and detail."""
        final = UploadRejected(self.status, self.error_list, filename=self.filename)
        final.summary, final.args, final.detail = summary, (summary,), detail
        final.attempts = attempts
        return final


class RetriesExhausted(MessageError):
    kind = "exhausted"

    def __init__(
        self,
        attempts: int,
        last_error: str,
        detail: dict[str, Any],
        *,
        summary: str | None = None,
    ) -> None:
        super().__init__(
            summary or f"gave up after {attempts} attempts: {last_error}",
            {"attempts": attempts, "lastError": last_error, **detail},
            attempts=attempts,
        )


class RetryLater(ForwarderError):
    """Transient failures outlasted the in-process budget; ``detail`` says what failed last."""

    def __init__(self, attempts: int, reason: str, detail: dict[str, Any]) -> None:
        super().__init__(reason)
        self.attempts = attempts
        """Calls made to the API for this delivery (0 if the breaker let none out)."""
        self.reason = reason
        self.detail = detail


class TransientError(ForwarderError):
    """A failure that another attempt may cure.

    ``retry_after`` is the server's own hint in seconds (``Retry-After`` or the rate-limit
    headers), ``None`` when it gave none.
    """

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        error_list: list[Any] | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.error_list = error_list


class CircuitOpen(TransientError):
    """The circuit breaker will not let a call out before the retry budget ends."""

    def __init__(self, open_for: float) -> None:
        super().__init__(
            f"circuit open: the API kept failing, calls held back for {open_for:.1f} s",
            retry_after=open_for,
        )


class RequestRejected(ForwarderError):
    """The API refused a call other than a ticket for good (a 4xx but 401/408/425/429)."""

    def __init__(self, route: str, status: int, error_list: list[Any]) -> None:
        super().__init__(f"the API rejected {route} with HTTP {status}")
        self.route = route
        self.status = status
        self.error_list = error_list


class ShuttingDown(ForwarderError):
    """A wait for a pacing slot or a retry was cut short by shutdown; nothing was sent."""

    def __init__(self) -> None:
        super().__init__("the worker is stopping")


class FatalError(ForwarderError):
    """The worker must stop; messages in hand go back to the queue untouched."""

    exit_code = EXIT_FAILED


class CredentialsRejected(FatalError):
    """``POST /v1/auth`` refused the refresh token (any 4xx but 408/425/429)."""

    exit_code = EXIT_CREDENTIALS

    def __init__(self, status: int, error_list: list[Any]) -> None:
        super().__init__(
            f"the SCX API rejected the refresh token (HTTP {status}); "
            "check SCX_REFRESH_TOKEN / SCX_REFRESH_TOKEN_FILE"
        )
        self.status = status
        self.error_list = error_list
