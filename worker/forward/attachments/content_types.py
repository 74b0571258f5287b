"""Content types: what the upload route accepts, and the extension each one implies."""

from __future__ import annotations

import re

# POST /v1/channel/ticket/attachment takes these, and any image/* (API-FACTS.md).
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
ALLOWED_TEXT = "text/plain, application/pdf, application/msword, application/vnd.ms-excel, " \
    "the OOXML types of .docx and .xlsx, or image/*"  # fmt: skip

_EXTENSIONS = {
    "text/plain": "txt",
    "application/pdf": "pdf",
    "application/msword": "doc",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/gif": "gif",
    "image/webp": "webp",
    "image/svg+xml": "svg",
    "image/tiff": "tif",
    "image/bmp": "bmp",
    "image/heic": "heic",
    "image/avif": "avif",
}
_WORD = re.compile(r"[A-Za-z0-9_]+")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def media_type(content_type: str) -> str:
    """``type/subtype`` in lower case, parameters dropped (``Text/Plain; charset=x``)."""
    return content_type.split(";", 1)[0].strip().lower()


def allowed_type(content_type: str) -> bool:
    """Whether the API accepts an upload of this type (parameters ignored)."""
    media = media_type(content_type)
    major, slash, minor = media.partition("/")
    if not slash or not _TOKEN.fullmatch(major) or not _TOKEN.fullmatch(minor):
        return False
    return media in ALLOWED_TYPES or major == "image"


def same_kind(declared: str, served: str) -> bool:
    """Whether a source's type agrees with the declared one: equal, or both images."""
    a, b = media_type(declared), media_type(served)
    return a == b or (a.startswith("image/") and b.startswith("image/"))


def extension_for(content_type: str) -> str:
    """The extension a name without a usable one gets from its content type."""
    media = media_type(content_type)
    if media in _EXTENSIONS:
        return _EXTENSIONS[media]
    major, _, minor = media.partition("/")
    word = _WORD.match(minor.removeprefix("x-"))
    if major == "image" and word:
        return word.group(0)[:10]
    return "bin"
