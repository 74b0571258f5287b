"""The one filename a file has in both calls: the ticket's ``attachment[].filename`` and the
upload's ``filename`` (which must match ``^\\w+\\.\\w{1,10}$``, ASCII ``\\w``).

``safe_filename`` derives it from the sender's name, deterministically:

1. only the last component of a path counts (``C:\\Users\\x\\a.png`` is ``a.png``);
2. the extension is what follows the last ``.`` if, made ASCII, it is 1-10 word characters;
   otherwise the name has no usable extension and gets the one of its declared content type
   (``application/pdf``: ``pdf``, ``image/jpeg``: ``jpg``, an unknown ``image/x-foo``: ``foo``,
   ``bin`` as the last resort), the whole name then being the stem
   (``report.final version`` declared ``application/pdf`` is ``report_final_version.pdf``);
3. the stem is made ASCII (accents dropped: ``Müller`` is ``Muller``, ``ß`` is ``ss``), each
   run of other characters becomes one ``_`` (``Red Dot (1)`` is ``Red_Dot_1_``), and it is
   cut to ``MAX_STEM`` characters;
4. a stem with no ASCII letter or digit left becomes ``file`` if the sender's stem had letters
   or digits of another script (``дом.pdf`` is ``file.pdf``).

A name is *unusable* (``UnusableName``, the message is ``invalid``) when it holds a control
character, or when its stem has no letter or digit in any script (``???.png``, ``(  ).pdf``,
``.png``): such a name names nothing a seller could recognise.

``assign_names`` makes names unique within a ticket, ignoring case (``a.png`` and ``A.PNG``
are one file on a case-insensitive store): a later duplicate gets ``_2``, ``_3``, ... before
its extension (``a.png``, ``a_2.png``). Attachments without a source keep their name verbatim
(nothing is uploaded, so only the ticket's looser rule applies) but are counted when checking
uniqueness, so an uploaded file never shares a name with another attachment.

**Unique per conversation, stable per message.** SCX keeps uploads per (sellerId, ticketId,
filename), and ``ticketId`` names a conversation whose messages may each bring a ``note.txt``.
So every uploaded name then gets the message's *discriminator*
(``worker.forward.identity.MessageIdentity.discriminator``: the first 12 hex digits of the
SHA-256 of the message's identity) as a last ``_`` part of its stem: ``note.txt`` of message
``evt-1`` is ``note_8c2a4b0e3f11.txt``, its second ``note.txt`` ``note_2_8c2a4b0e3f11.txt``.
Every uploaded name of a message ends in ``_<its discriminator>.<ext>`` and the discriminator
has a fixed length, so names of two messages can only be equal if their discriminators are:
the odds are those of a 48-bit digest (``worker.forward.identity``), with no state needed.
The same message (redelivered, delayed, replayed) has the same identity, so the same names.
The stem is cut to ``MAX_STEM`` characters before the suffixes are added, so a name is at
most ``MAX_STEM`` + 17 characters and its extension (``_<n>`` aside).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from worker.forward.attachments.content_types import extension_for

MAX_STEM = 100
_EXTENSION = re.compile(r"[A-Za-z0-9_]{1,10}")
_NOT_WORD = re.compile(r"[^A-Za-z0-9_]+")
_ALNUM = re.compile(r"[A-Za-z0-9]")
UPLOAD_NAME = re.compile(r"[A-Za-z0-9_]+\.[A-Za-z0-9_]{1,10}")
"""The upload's filename pattern (``fullmatch``; ``$`` in JTL's pattern is the end)."""

# Letters NFKD does not decompose into ASCII.
_LETTERS = str.maketrans(
    {"ß": "ss", "ẞ": "SS", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O",
     "đ": "d", "Đ": "D", "ł": "l", "Ł": "L", "þ": "th", "Þ": "TH", "ı": "i"}
)  # fmt: skip


class UnusableName(ValueError):
    """No upload name can be made from this filename; the text says why (no quote of it).

    ``index`` is the attachment's position when ``assign_names`` raised it.
    """

    def __init__(self, reason: str, index: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.index = index


@dataclass(frozen=True, slots=True)
class NameRequest:
    """One attachment of a ticket: its name, declared type, and whether bytes are uploaded."""

    filename: str
    content_type: str
    uploaded: bool


def safe_filename(filename: str, content_type: str) -> str:
    """The upload name for ``filename`` (module docstring); ``UnusableName`` if none."""
    if any(unicodedata.category(char) == "Cc" for char in filename):
        raise UnusableName("the filename contains a control character")
    base = re.split(r"[/\\]", filename)[-1]
    stem, dot, extension = base.rpartition(".")
    ascii_extension = _ascii(extension)
    if not dot or not _EXTENSION.fullmatch(ascii_extension):
        stem, ascii_extension = base, extension_for(content_type)
    if not any(char.isalnum() for char in stem):
        raise UnusableName("the filename has no letter or digit before its extension")
    safe = _NOT_WORD.sub("_", _ascii(stem))[:MAX_STEM]
    if not _ALNUM.search(safe):
        safe = "file"
    return f"{safe}.{ascii_extension}"


def assign_names(requests: Sequence[NameRequest], discriminator: str | None = None) -> list[str]:
    """The name each attachment has in the ticket, in order (module docstring).

    With ``discriminator`` (``\\w`` characters; the message's), every uploaded name ends in
    ``_<discriminator>`` before its extension. ``UnusableName.index`` is the first attachment
    whose name is unusable.
    """
    taken = {r.filename.casefold() for r in requests if not r.uploaded}
    names: list[str] = []
    for index, request in enumerate(requests):
        if not request.uploaded:
            names.append(request.filename)
            continue
        try:
            name = safe_filename(request.filename, request.content_type)
        except UnusableName as exc:
            raise UnusableName(exc.reason, index) from None
        stem, _, extension = name.rpartition(".")
        number = 1
        while name.casefold() in taken:
            number += 1
            name = f"{stem}_{number}.{extension}"
        taken.add(name.casefold())
        names.append(name)
    if discriminator is None:
        return names
    return [
        _discriminated(name, discriminator) if request.uploaded else name
        for name, request in zip(names, requests, strict=True)
    ]


def _discriminated(name: str, discriminator: str) -> str:
    stem, _, extension = name.rpartition(".")
    return f"{stem}_{discriminator}.{extension}"


def _ascii(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.translate(_LETTERS))
    return "".join(
        char
        for char in decomposed
        if char.isascii() or not unicodedata.combining(char)
        # Non-ASCII characters that are not accents stay, to become "_" with the rest.
    )
