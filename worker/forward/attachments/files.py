"""A ticket's file on its way: where it comes from (``AttachmentSource``), and its bytes on
the worker's disk (``Fetched``, ``FetchedFiles``), as ``worker.forward.mapping`` and
``fetch`` hand them on. The package docstring (``worker.forward.attachments``) tells the way.
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
