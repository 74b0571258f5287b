"""``POST /v1/channel/ticket/attachment``: one file for a ticket the emulator accepted before.

By the API's rules (API-FACTS.md, JTL's ``AttachmentData`` model): ``multipart/form-data``
with two parts,

- ``attachmentData``: JSON text ``{"sellerId", "ticketId", "filename"}``, ``sellerId``
  ``^\\w{1,50}$``, ``ticketId`` 1-256 characters, ``filename`` ``^\\w+\\.\\w{1,10}$`` (``\\w``
  read as ASCII, as JSON Schema does);
- ``attachment``: the bytes, at most ``MAX_FILE_BYTES``, with a content type of
  ``ALLOWED_TYPES`` or ``image/*``.

Beyond the schema the emulator checks what the API's description implies: the ticket exists
for that seller (an upload is for "an existing ticket"), and the filename is one the ticket
names in its ``attachment`` list (otherwise the seller would see a file no ticket mentions).

A ticket is a conversation (``worker.emulator.tickets``): a file may be named by any of its
messages, and SCX keeps files per (sellerId, ticketId, filename). A second upload of a stored
key overwrites the file, or, when ``conflict_on_existing`` says so
(``conflict_on_existing_file``), is answered 409 and the first file stays.

Answers: 201 (stored in ``Emulator.files``), 400 with an ``errorList`` for a request that
breaks a rule, 404 for an unknown ticket, 409 for an existing file (if so configured), 413 for
a file over the limit. The file part is
read in chunks and abandoned as soon as it passes the limit, so a request costs the emulator
at most ``MAX_FILE_BYTES`` of memory whatever the client sends.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import BodyPartReader, web

from worker.emulator.answers import Text, english, entry, fail, json_response
from worker.emulator.files import FileStore

# "At most 16 MB" in the API's words; read as 16 MiB (16 * 1024 * 1024 bytes), the larger
# reading, so the emulator never refuses what the real API might accept. The worker's own
# ATTACHMENT_MAX_BYTES defaults to the same number.
MAX_FILE_BYTES = 16 * 1024 * 1024
# Written from API-FACTS.md on purpose, not imported from worker.forward.attachments: like
# ticket.schema.json, the emulator's rules are a second reading of the API that catches the
# worker's mistakes instead of sharing them.
ALLOWED_TYPES = frozenset(
    {
        "text/plain",
        "application/pdf",
        "application/msword",
        "application/vnd.ms-excel",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    }
)
_SELLER_ID = re.compile(r"\w{1,50}", re.ASCII)
_FILENAME = re.compile(r"\w+\.\w{1,10}", re.ASCII)
# attachmentData is a few dozen bytes; anything much larger is not one.
_MAX_METADATA_BYTES = 16 * 1024
_CHUNK = 64 * 1024

TicketKey = tuple[str, str]  # (sellerId, ticketId)
NamesOf = Callable[[TicketKey], frozenset[str] | None]
"""The attachment filenames an accepted ticket names; ``None`` if it was never accepted."""


def allowed_content_type(content_type: str) -> bool:
    """Whether the API takes a file of this type (parameters such as charset are ignored)."""
    base = content_type.split(";")[0].strip().lower()
    return base in ALLOWED_TYPES or (base.startswith("image/") and len(base) > len("image/"))


class _Refused(Exception):
    def __init__(self, status: int, errors: list[tuple[str, Text]]) -> None:
        super().__init__(status)
        self.status = status
        self.errors = errors


class UploadRoute:
    """The route's answer function (``answer``), given what it stores into and checks with."""

    def __init__(
        self,
        files: FileStore,
        names_of: NamesOf,
        conflict_on_existing: Callable[[], bool] = lambda: False,
    ) -> None:
        self._files = files
        self._names_of = names_of
        self._conflict_on_existing = conflict_on_existing

    async def answer(self, request: web.Request, headers: dict[str, str]) -> web.Response:
        try:
            metadata, content_type, data = await _read_parts(request)
            seller_id, ticket_id, filename = self._check(metadata, content_type)
        except _Refused as refused:
            return _refusal(request, refused, headers)
        if self._conflict_on_existing() and self._files.get(seller_id, ticket_id, filename):
            self._files.conflicts += 1
            text = (f"Anhang {filename} existiert bereits", f"attachment {filename} exists already")
            return fail(request, 409, "CONFLICT409", text, headers)
        self._files.put(seller_id, ticket_id, filename, content_type, data)
        return web.Response(status=201, headers=headers)

    def _check(self, metadata: Any, content_type: str) -> tuple[str, str, str]:
        if not isinstance(metadata, dict):
            text = (
                "attachmentData muss ein JSON-Objekt sein",
                "attachmentData must be a JSON object",
            )
            raise _Refused(400, [("VAL100", text)])
        seller_id, ticket_id = metadata.get("sellerId"), metadata.get("ticketId")
        filename = metadata.get("filename")
        errors: list[tuple[str, Text]] = []
        if not isinstance(seller_id, str) or not _SELLER_ID.fullmatch(seller_id):
            errors.append(("VAL100", _field("sellerId", r"^\w{1,50}$")))
        if not isinstance(ticket_id, str) or not 1 <= len(ticket_id) <= 256:
            errors.append(("VAL100", _field("ticketId", "1-256 characters")))
        if not isinstance(filename, str) or not _FILENAME.fullmatch(filename):
            errors.append(("VAL100", _field("filename", r"^\w+\.\w{1,10}$")))
        if not allowed_content_type(content_type):
            text = (
                f"Dateityp {content_type or '(keiner)'} ist nicht erlaubt",
                f"content type {content_type or '(none)'} is not allowed",
            )
            errors.append(("VAL101", text))
        if errors:
            raise _Refused(400, errors)
        assert isinstance(seller_id, str)
        assert isinstance(ticket_id, str)
        assert isinstance(filename, str)
        names = self._names_of((seller_id, ticket_id))  # of every message of the conversation
        if names is None:
            text = "Ticket nicht gefunden", "ticket not found"
            raise _Refused(404, [("NOTFOUND404", text)])
        if filename not in names:
            text = (
                f"Das Ticket nennt keinen Anhang {filename}",
                f"the ticket names no attachment {filename}",
            )
            raise _Refused(400, [("VAL102", text)])
        return seller_id, ticket_id, filename


async def _read_parts(request: web.Request) -> tuple[Any, str, bytes]:
    """(attachmentData decoded, the file's content type, its bytes), or ``_Refused``."""
    if request.content_type != "multipart/form-data":
        text = "Der Body muss multipart/form-data sein", "body must be multipart/form-data"
        raise _Refused(400, [("VAL100", text)])
    metadata: Any = None
    file: tuple[str, bytes] | None = None
    seen_metadata = False
    try:
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue  # a nested multipart is no part the API knows
            if part.name == "attachmentData" and not seen_metadata:
                seen_metadata = True
                metadata = _json_or_none(await _read_bounded(part, _MAX_METADATA_BYTES))
            elif part.name == "attachment" and file is None:
                content_type = part.headers.get("Content-Type", "")
                file = content_type, await _read_bounded(part, MAX_FILE_BYTES)
    except (ValueError, AssertionError, RuntimeError) as exc:
        # aiohttp's reader raises these for a body that is not well-formed multipart.
        text = "Ungültiger multipart-Body", f"malformed multipart body ({exc})"
        raise _Refused(400, [("VAL100", text)]) from None
    except ConnectionResetError:
        # The client went away mid-body (a killed worker): nobody reads this answer, but the
        # state counts it, and aiohttp does not log a handler error for it.
        text = "Verbindung während des Uploads verloren", "connection lost during the upload"
        raise _Refused(400, [("VAL100", text)]) from None
    missing = [
        ("VAL100", (f"Pflichtteil {name} fehlt", f"required part {name} not found"))
        for name, present in (("attachmentData", seen_metadata), ("attachment", file is not None))
        if not present
    ]
    if missing:
        raise _Refused(400, missing)
    assert file is not None
    return metadata, file[0], file[1]


async def _read_bounded(part: BodyPartReader, limit: int) -> bytes:
    """The part's bytes; ``_Refused`` (413) as soon as they pass ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(_CHUNK):
        size += len(chunk)
        if size > limit:
            text = (
                f"Teil {part.name} ist größer als {limit} Bytes",
                f"part {part.name} is larger than {limit} bytes",
            )
            raise _Refused(413, [("FILE413", text)])
        chunks.append(chunk)
    return b"".join(chunks)


def _json_or_none(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _field(name: str, rule: str) -> Text:
    return f"Ungültiges Feld {name} ({rule})", f"{name}: does not match {rule}"


def _refusal(request: web.Request, refused: _Refused, headers: dict[str, str]) -> web.Response:
    if len(refused.errors) == 1:
        code, text = refused.errors[0]
        return fail(request, refused.status, code, text, headers)
    lang = 1 if english(request) else 0
    entries = [entry(code, text[lang]) for code, text in refused.errors]
    return json_response({"errorList": entries}, refused.status, headers)
