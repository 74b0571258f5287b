"""Attachment files: where a ticket's files come from, what they are called, how they arrive.

A ``data.attachments[]`` item of an event may carry one source besides ``filename`` and
``content_type`` (docs/guides/attachments.md, "Sources"): ``url`` (downloaded, only from a
prefix listed in ``ATTACHMENT_ALLOWED_URLS``) or ``content_base64`` (the bytes inline).
``worker.forward.mapping`` validates the message and returns a ``Decoded``: the ``Ticket`` to
send and one ``AttachmentSource`` per file that has bytes to upload (``Decoded.files``).
``fetch_all`` then turns those into ``Fetched`` files on disk, before any SCX call, so a
source that can never work dead-letters the message as ``invalid`` without a ticket being
created half-way.

The modules, each with one job:

- ``files``: what a file is on its way (``AttachmentSource``, ``Fetched``, ``FetchedFiles``);
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

from worker.forward.attachments.fetch import (
    clear_spool,
    fetch_all,
    source_client,
    spool_directory,
)
from worker.forward.attachments.files import AttachmentSource, Fetched, FetchedFiles, SourceKind

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
