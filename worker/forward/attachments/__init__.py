"""Attachment files: where a ticket's files come from, what they are called, how they arrive.

A ``data.attachments[]`` item of an event may carry one source besides ``filename`` and
``content_type`` (README, "Input contract"): ``url`` (downloaded, only from a prefix listed in
``ATTACHMENT_ALLOWED_URLS``) or ``content_base64`` (the bytes inline). ``worker.forward.mapping``
validates the message and returns a ``worker.forward.mapping.Decoded``: the ``Ticket`` to send and
one ``AttachmentSource`` per file that has bytes to upload (``Decoded.files``). ``fetch_all``
then turns those into ``Fetched`` files on disk, before any SCX call, so a source that can
never work dead-letters the message as ``invalid`` without a ticket being created half-way.

The modules, each with one job:

- ``names``: the one filename (``^\\w+\\.\\w{1,10}$``) that both the ticket and the upload send;
- ``sources``: URL normalisation and the allow-list;
- ``fetch``: download and decode into ``worker.core.spool``, with every limit and check.

Typical use (the consumer)::

    decoded = decode_message(body, headers=h, mapper=m)  # InvalidTicket / MalformedMessage
    with await fetch_all(decoded.files, settings, http=sources_http) as fetched:
        ...create the ticket, upload each ``fetched`` file...
    # every temporary file is gone here, whatever happened inside

Failures of ``fetch_all``: ``InvalidTicket`` (permanent: refused URL, 4xx, too big, wrong
type, bad base64), ``RetryLater`` (transient failures outlasted the in-process retries,
``attempts`` 0 since no SCX call was made), ``ShuttingDown`` (a back-off wait was interrupted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from worker.core.sources import redact
from worker.core.spool import Spooled

SourceKind = Literal["url", "base64"]


@dataclass(frozen=True, slots=True)
class AttachmentSource:
    """One file of a ticket that has bytes to upload, as validated from the message.

    ``filename`` is the sanitised name (``names.safe_filename``): the ticket's
    ``attachment[].filename`` and the upload's ``filename`` are this same string.
    ``original_filename`` is the name the sender gave; logs and dead-letter details use it.
    ``url`` may be a pre-signed URL whose query string is a credential: it is left out of the
    repr, and ``where`` is the only form of it fit for a log line.
    """

    index: int
    """Position in the ticket's attachment list (0-based), for error locations."""
    filename: str
    original_filename: str
    content_type: str
    """As declared by the sender; sent unchanged in the ticket and in the upload."""
    kind: SourceKind
    url: str | None = field(default=None, repr=False)
    content_base64: str | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        """The source fit for logs and errors: the URL without userinfo, query or fragment."""
        return "inline base64" if self.url is None else redact(self.url)


@dataclass(slots=True)
class Fetched:
    """One file's bytes on the worker's disk (or in memory below the spool threshold).

    ``spooled.chunks()`` reads it from the start, as often as needed (a retried upload).
    """

    filename: str
    original_filename: str
    content_type: str
    spooled: Spooled = field(repr=False)

    @property
    def size(self) -> int:
        return self.spooled.size

    @property
    def sha256(self) -> str:
        return self.spooled.sha256

    def close(self) -> None:
        self.spooled.close()


class FetchedFiles(tuple[Fetched, ...]):
    """What ``fetch_all`` returns: the files in the order asked, closed together.

    Use it as a context manager (``with await fetch_all(...) as files:``) or call ``close``;
    closing removes every temporary file and may be repeated.
    """

    __slots__ = ()

    def close(self) -> None:
        for fetched in self:
            fetched.close()

    def __enter__(self) -> FetchedFiles:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


from worker.forward.attachments.fetch import (  # noqa: E402 (the dataclasses above come first)
    clear_spool,
    fetch_all,
    source_client,
    spool_directory,
)

__all__ = [
    "AttachmentSource",
    "Fetched",
    "FetchedFiles",
    "SourceKind",
    "clear_spool",
    "fetch_all",
    "source_client",
    "spool_directory",
]
