"""Which URLs the worker may download from: normalisation, the allow-list, redaction.

A URL source is fetched only when its *normalised* form starts with a prefix listed in
``ATTACHMENT_ALLOWED_URLS``, and the worker then requests exactly that normalised form, so
what was checked is what is fetched. Normalising (RFC 3986, section 6):

- scheme and host lower case, a trailing dot of the host dropped, a non-ASCII host in its
  IDNA (``xn--``) form; the scheme's default port (80, 443) left out;
- percent-escapes of unreserved characters decoded (``%2e`` is ``.``, ``%7E`` is ``~``), the
  others written in upper case, characters that must be escaped escaped (UTF-8);
- ``.`` and ``..`` path segments resolved (``/tickets/../admin`` is ``/admin``), an empty
  path made ``/``; the fragment dropped (it is never sent).

Refused outright, whatever the allow-list says: a scheme other than http(s); userinfo
(``https://user:pw@host/``, also an empty one, ``https://@host/``); no host; an invalid port;
whitespace, control characters or a backslash anywhere (parsers disagree about them); an
escaped slash or backslash (``%2F``, ``%5C``) in the path, which some servers decode *after*
routing, so ``/tickets/..%2Fadmin`` could reach ``/admin``.

A prefix matches on path-segment boundaries: ``https://h/tickets`` allows ``/tickets`` and
``/tickets/...`` but not ``/tickets-evil``; ``https://h/tickets/`` allows only what is below
it. Scheme, host and port must be equal (no subdomain wildcards, ``http`` is not ``https``).

Pre-signed URLs carry their credentials in the query string: ``redact`` is the only form of a
source URL that goes into logs, errors and dead-letter details (no userinfo, query, fragment).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import SplitResult, quote, urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Everything a path may hold unescaped (RFC 3986 pchar and "/"), and "%" for escapes kept.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_UNRESERVED = re.compile(r"[A-Za-z0-9\-._~]")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\]")
_HOST = re.compile(r"[a-z0-9\-._~!$&'()*+,;=]+|\[[0-9a-f:.]+\]")


class RefusedUrl(ValueError):
    """The URL may not be fetched; the text says why and never quotes the URL."""


@dataclass(frozen=True, slots=True)
class NormalUrl:
    """A URL in normal form; ``str()`` is what is requested."""

    scheme: str
    host: str
    port: int | None
    """``None`` for the scheme's default port."""
    path: str
    query: str

    @property
    def origin(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.scheme}://{self.host}{port}"

    def __str__(self) -> str:
        query = f"?{self.query}" if self.query else ""
        return f"{self.origin}{self.path}{query}"

    def redacted(self) -> str:
        return f"{self.origin}{self.path}"


def normalise(url: str) -> NormalUrl:
    """``url`` in normal form (module docstring), or ``RefusedUrl`` saying why not."""
    if _FORBIDDEN.search(url):
        raise RefusedUrl("the URL contains whitespace, a control character or a backslash")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise RefusedUrl("the URL cannot be parsed") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise RefusedUrl("only http and https URLs are fetched")
    if "@" in parts.netloc:
        raise RefusedUrl("a URL with userinfo (user:password@) is refused")
    host = _host(parts)
    try:
        port = parts.port
    except ValueError:
        raise RefusedUrl("the URL's port is invalid") from None
    if port == _DEFAULT_PORTS[scheme]:
        port = None
    return NormalUrl(scheme, host, port, _path(parts.path), _query(parts.query))


def _host(parts: SplitResult) -> str:
    raw = parts.hostname
    if not raw:
        raise RefusedUrl("the URL has no host")
    if ":" in raw:  # an IPv6 literal; urlsplit has already removed the brackets
        host = f"[{raw.lower()}]"
    else:
        raw = raw.rstrip(".")
        try:
            host = raw.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise RefusedUrl("the URL's host is not a valid host name") from None
    if not _HOST.fullmatch(host):
        raise RefusedUrl("the URL's host is not a valid host name")
    return host


def _path(path: str) -> str:
    if _BAD_ESCAPE.search(path):
        raise RefusedUrl("the URL's path holds a malformed percent-escape")
    path = _ESCAPE.sub(_unescape_unreserved, path)
    if re.search(r"%(2F|5C)", path):
        raise RefusedUrl("the URL's path holds an escaped slash or backslash (%2F, %5C)")
    path = quote(path, safe=_PATH_SAFE)
    return _remove_dot_segments(path or "/")


def _query(query: str) -> str:
    if _BAD_ESCAPE.search(query):
        raise RefusedUrl("the URL's query holds a malformed percent-escape")
    # The query is sent as received (a signature may cover its exact bytes), only made
    # ASCII where it is not.
    return quote(query, safe="/:@!$&'()*+,;=-._~%?")


def _unescape_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if _UNRESERVED.fullmatch(char) else f"%{match.group(1).upper()}"


def _remove_dot_segments(path: str) -> str:
    """RFC 3986, section 5.2.4, for an absolute path."""
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


@dataclass(frozen=True, slots=True)
class AllowList:
    """The prefixes of ``ATTACHMENT_ALLOWED_URLS``, normalised; empty allows nothing."""

    prefixes: tuple[NormalUrl, ...] = ()

    @classmethod
    def parse(cls, prefixes: tuple[str, ...] | list[str]) -> AllowList:
        """``ValueError`` for a prefix that is no URL, has userinfo, a query or a fragment."""
        return cls(tuple(prefix_url(prefix) for prefix in prefixes))

    def allows(self, url: NormalUrl) -> bool:
        return any(_under(url, prefix) for prefix in self.prefixes)

    def check(self, url: str) -> NormalUrl:
        """``url`` normalised if it may be fetched; ``RefusedUrl`` otherwise."""
        normal = normalise(url)
        if not self.prefixes:
            raise RefusedUrl("URL sources are refused: ATTACHMENT_ALLOWED_URLS is empty")
        if not self.allows(normal):
            raise RefusedUrl("the URL is not under any prefix of ATTACHMENT_ALLOWED_URLS")
        return normal


def prefix_url(prefix: str) -> NormalUrl:
    """One allow-list entry in normal form; ``ValueError`` naming what is wrong with it."""
    parts = urlsplit(prefix) if not _FORBIDDEN.search(prefix) else None
    if parts is not None and (parts.query or parts.fragment or prefix.endswith(("?", "#"))):
        raise ValueError("a prefix may not have a query or a fragment")
    try:
        return normalise(prefix)
    except RefusedUrl as exc:
        raise ValueError(f"a prefix must be an http(s) URL: {exc}") from None


def _under(url: NormalUrl, prefix: NormalUrl) -> bool:
    if (url.scheme, url.host, url.port) != (prefix.scheme, prefix.host, prefix.port):
        return False
    if prefix.path.endswith("/"):
        return url.path.startswith(prefix.path)
    return url.path == prefix.path or url.path.startswith(prefix.path + "/")


def redact(url: str) -> str:
    """``url`` without userinfo, query and fragment: the only form fit for logs and errors."""
    try:
        return normalise(url).redacted()
    except RefusedUrl:
        pass
    try:
        parts = urlsplit(url)
        host = quote(parts.hostname or "", safe="[]:.-")
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable URL>"
    path = quote(parts.path, safe=_PATH_SAFE)
    return f"{parts.scheme.lower()}://{host}{port}{path}"[:500]
