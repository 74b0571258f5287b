"""A ticket with attachment files, delivered step by step: fetch, create, upload each.

``Delivery.deliver`` does what is left of one message (``worker.forward.progress.Steps``: what the
message says is done, plus the Redis record's view when configured):

1. fetch every file not uploaded yet (``worker.forward.attachments.fetch_all``), before any SCX
   call: a source that can never work raises ``InvalidTicket`` and no ticket exists half-way;
   a transient one ``RetryLater`` (after its own in-process retries);
2. create the ticket unless it exists (``create_ticket``: a ``409 Conflict`` counts as
   existing only for a message sent before, see below);
3. upload each file not uploaded yet, checking the record again before each step.

**A 409 is not proof.** ``ticketId`` names a conversation, so a ``409`` to a ticket call may
mean "this message exists" (an earlier attempt of it got through) or "this conversation exists"
(and this message, a follow-up, was refused). The consumer says which attempt this is
(``sent_before``, ``worker.forward.consumer.sent_before``: the progress says a ticket call of this
message went out, or the broker redelivers it, or it comes back from the delay stage); a
``409`` is "already created" only then. On the first attempt of a message it raises
``TicketRejected`` (kind ``rejected``, the API's ``errorList`` in the detail): dead-lettered,
visible and replayable, never acked as done. The same holds for a ``409`` to an upload: the
name carries this message's discriminator, so after an earlier attempt it is this message's
own file, and on a first attempt it is a refusal.

``steps`` is updated as each step succeeds, so whatever ends the message early, the
consumer's copy of it (delay stage, DLQ, back to the queue) carries exactly what was done.
A file the API refuses (a non-retryable 4xx) does not stop the others; the message then
ends as one ``UploadRejected`` that names the files uploaded and refused. Every temporary
file is closed (and so removed) before ``deliver`` returns or raises.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import structlog

from worker.core.errors import MessageError, RetryLater, TicketRejected, UploadRejected
from worker.core.settings import Settings
from worker.forward.attachments import Fetched, fetch_all, source_client
from worker.forward.mapping import Decoded
from worker.forward.progress import StateRecord, Steps
from worker.models import Ticket
from worker.obs import metrics
from worker.scx import Forwarded, ScxClient

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Delivered:
    """A ticket with files: everything is in SCX now (some of it perhaps from before)."""

    status: int | None
    """The ticket call's status (201, or 409 for "already there"); None if done before."""
    attempts: int
    uploaded: int
    skipped: int
    """Steps not repeated because the progress header or record said they were done."""
    files: tuple[str, ...] = ()
    """Every file of the ticket now in SCX (upload names, in the ticket's order)."""


class Delivery:
    """Fetches, creates and uploads for the consumer; owns the source client and the record."""

    def __init__(self, settings: Settings, client: ScxClient) -> None:
        self._settings = settings
        self._client = client
        self._sources = source_client(settings)
        self._record = (
            StateRecord(settings, sleep=client.waits.sleep)
            if settings.worker_state_redis_url is not None
            else None
        )

    @property
    def recording(self) -> bool:
        """Whether a progress record (Redis) is kept: then every ticket goes through here."""
        return self._record is not None

    async def aclose(self) -> None:
        await self._sources.aclose()
        if self._record is not None:
            await self._record.aclose()

    async def deliver(
        self, decoded: Decoded, steps: Steps, *, sent_before: bool
    ) -> Delivered | UploadRejected:
        """Fetch the files not uploaded yet, create the ticket unless it exists, upload them.

        ``sent_before``: an earlier attempt of this message may have reached SCX (module
        docstring: what a ``409`` means). Raises what ends the message early, with
        ``attempts`` counting every SCX call made.
        """
        header = Steps(steps.ticket, list(steps.uploaded))  # what the message arrived with
        calls, status, refused, sent = 0, None, [], set()
        try:
            await self._recall(decoded, steps)
            pending = [f for f in decoded.files if f.filename not in steps.uploaded]
            with await fetch_all(
                pending, self._settings, http=self._sources, sleep=self._client.waits.sleep
            ) as files:
                await self._recall(decoded, steps)
                if steps.ticket:
                    _skipped("ticket", None, header)
                else:
                    status, calls = await self._create_ticket(decoded, steps, sent_before)
                for file in files:
                    await self._recall(decoded, steps)
                    if file.filename in steps.uploaded:
                        continue
                    try:
                        calls += await self._upload(decoded, file, steps, sent_before)
                    except UploadRejected as exc:
                        calls += exc.attempts
                        refused.append(exc)
                    else:
                        sent.add(file.filename)
        except (MessageError, RetryLater) as exc:
            exc.attempts += calls
            raise
        before = [
            f.filename
            for f in decoded.files
            if f.filename in steps.uploaded and f.filename not in sent
        ]
        for name in before:
            _skipped("upload", name, header)
        if refused:
            return _upload_refusal(decoded, steps, refused, calls)
        in_scx = tuple(f.filename for f in decoded.files if f.filename in steps.uploaded)
        return Delivered(status, calls, len(sent), len(before) + (status is None), in_scx)

    async def _recall(self, decoded: Decoded, steps: Steps) -> None:
        """Add what the progress record says is done (a no-op without Redis)."""
        if self._record is not None:
            ticket = decoded.ticket
            created, uploaded = await self._record.recall(
                ticket.seller_id, ticket.ticket_id, decoded.identity
            )
            steps.merge(created, uploaded)

    async def _create_ticket(
        self, decoded: Decoded, steps: Steps, sent_before: bool
    ) -> tuple[int, int]:
        """(the ticket call's status, calls made)."""
        ticket = decoded.ticket
        forwarded = await create_ticket(self._client, ticket, steps, sent_before=sent_before)
        if self._record is not None:
            await self._record.ticket_created(ticket.seller_id, ticket.ticket_id, decoded.identity)
        return forwarded.status, forwarded.attempts

    async def _upload(
        self, decoded: Decoded, file: Fetched, steps: Steps, sent_before: bool
    ) -> int:
        """Upload one file; returns the calls made."""
        ticket = decoded.ticket
        try:
            uploaded = await self._client.upload_attachment(
                ticket.seller_id,
                ticket.ticket_id,
                file.filename,
                file.content_type,
                file.spooled.file,
            )
        except UploadRejected as exc:
            if exc.status != httpx.codes.CONFLICT or not sent_before:
                raise
            # The name is this message's own (its discriminator): an earlier attempt stored it.
            log.info("attachment.already_uploaded", filename=file.filename, status=exc.status)
            attempts = exc.attempts
        else:
            attempts = uploaded.attempts
            log.info(
                "attachment.uploaded",
                filename=file.filename,
                original_filename=file.original_filename,
                size=file.size,
                attempts=attempts,
            )
        steps.add_upload(file.filename)
        if self._record is not None:
            await self._record.file_uploaded(
                ticket.seller_id, ticket.ticket_id, decoded.identity, file.filename
            )
        return attempts


async def create_ticket(
    client: ScxClient, ticket: Ticket, steps: Steps, *, sent_before: bool
) -> Forwarded:
    """POST the ticket; a ``409`` counts as created only if ``sent_before`` (module docstring).

    ``steps`` says what the call left behind: ``attempted`` while its answer is unknown (a
    ``RetryLater`` may follow a request SCX did take), ``ticket`` once it is created, neither
    once the API refused it.
    """
    steps.attempted = True
    try:
        forwarded = await client.send_ticket(ticket.to_json())
    except TicketRejected:
        steps.attempted = False  # a refusal: nothing was created
        raise
    if forwarded.status == httpx.codes.CONFLICT and not sent_before:
        steps.attempted = False
        refused = TicketRejected(forwarded.status, list(forwarded.error_list))
        refused.summary = (
            "API answered 409 Conflict to the first attempt of this message: the ticketId "
            "names a conversation that exists, not proof that this message was taken"
        )
        refused.args = (refused.summary,)
        refused.attempts = forwarded.attempts
        log.warning("ticket.conflict_refused", status=forwarded.status)
        raise refused
    if forwarded.status == httpx.codes.CONFLICT:
        metrics.ticket_already_created()
        log.info("scx.ticket_already_created", status=forwarded.status)
    steps.ticket, steps.attempted = True, False
    return forwarded


def _skipped(step: str, filename: str | None, header: Steps) -> None:
    """Count and log a step not done again; ``header`` is what the message arrived with."""
    known = header.ticket if filename is None else filename in header.uploaded
    source = "header" if known else "redis"
    metrics.step_skipped(step, source)
    log.info("ticket.step_skipped", step=step, filename=filename, why=f"done before ({source})")


def _upload_refusal(
    decoded: Decoded, steps: Steps, refused: list[UploadRejected], calls: int
) -> UploadRejected:
    """The dead-letter of a ticket whose files the API partly refused: what exists, what not."""
    original = {f.filename: f.original_filename for f in decoded.files}

    def named(filename: str) -> dict[str, str]:
        return {"filename": filename, "originalFilename": original.get(filename, filename)}

    first = refused[0]
    uploaded = [f.filename for f in decoded.files if f.filename in steps.uploaded]
    summary = (
        f"API rejected {len(refused)} of {len(decoded.files)} attachment uploads "
        f"(HTTP {first.status} for {first.filename}); the ticket exists, "
        f"{len(uploaded)} uploaded"
    )
    detail = {
        "status": first.status,
        "errorList": first.error_list,
        "ticket": "created",
        "uploaded": [named(name) for name in uploaded],
        "refused": [
            named(exc.filename) | {"status": exc.status, "errorList": exc.error_list}
            for exc in refused
        ],
    }
    return first.settled(summary, detail, calls)
