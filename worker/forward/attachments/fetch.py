"""Bring every file of a ticket onto the worker's disk, checked, before any SCX call.

``fetch_all`` works in three passes, so the cheapest refusals come first and nothing is
downloaded for a message that is refused anyway:

1. every URL is normalised and checked against ``ATTACHMENT_ALLOWED_URLS`` (``sources``);
2. every inline ``content_base64`` is decoded (strictly: the standard alphabet, padding
   required, no whitespace or line breaks) into the spool;
3. every URL is downloaded, one after the other, into the spool.

Downloads use their own ``httpx.AsyncClient`` (``source_client``), never the SCX client: no
token, no auth flow, no cookie jar, no default header of the API's can reach a source.
Redirects are followed by hand, at most ``MAX_REDIRECTS``, each target checked against the
allow-list like the first URL. ``Accept-Encoding: identity`` asks for the bytes as stored.

What a source's answer means:

==============================================  ==========================================
answer                                          outcome
==============================================  ==========================================
200 (or 203) with an allowed type, in size      the file, spooled
3xx with ``Location`` to an allowed URL         followed (at most 3 times)
3xx to a refused URL, a 4th redirect, no        ``InvalidTicket``
``Location``; any other 2xx/3xx; 4xx but
408/425/429; too big (``Content-Length`` or
counted); a type the API refuses; a type
that disagrees with the declared one
408, 425, 429, 5xx, timeout, connection error   retried in process (``SCX_RETRY_ATTEMPTS``
                                                within ``SCX_RETRY_BUDGET``), then
                                                ``RetryLater`` (the delay stage)
==============================================  ==========================================

Content types: the declared one (checked when the message is decoded) is what the ticket and
the upload send. The one the source serves must be one the API accepts too, and agree with
the declared one: the same media type, or both ``image/*`` (a PNG served as ``image/jpeg``
is still an image; the declared type wins). A source that serves no ``Content-Type`` is
taken at its declared word. ``application/octet-stream`` is refused: store the object with
its real type.

Every error names the file by its *original* name and the source by ``sources.redact``
(never the query string of a pre-signed URL, never userinfo).
"""

from __future__ import annotations

import asyncio
import binascii
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from http.cookiejar import Cookie, CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import structlog
from httpx_aiohttp import AiohttpTransport
from tenacity import RetryCallState, retry_if_exception_type

from worker.core.errors import InvalidTicket, RetryLater, TransientError
from worker.core.retry import is_transient_status, retry_after_header, retrying
from worker.core.settings import Settings
from worker.core.sources import AllowList, NormalUrl, RefusedUrl
from worker.core.spool import Spooled, TooLarge, clear_spool_dir, spool, spool_dir
from worker.forward.attachments.content_types import allowed_type, media_type, same_kind
from worker.forward.attachments.files import AttachmentSource, Fetched, FetchedFiles

log = structlog.get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]

MAX_REDIRECTS = 3
SPOOL_NAME = "worker"
# Base64 text decoded per step: a multiple of 4 characters (3 bytes per 4 characters).
_BASE64_STEP = 4 * 16 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_OK = frozenset({200, 203})
# A source's Retry-After is honoured up to this: longer than the retry budget is "later"
# (the delay stage), not a reason to hold the message here.
MAX_RETRY_AFTER = 60.0


def spool_directory() -> Path:
    """The worker's own directory for files on their way (created if missing)."""
    return spool_dir(SPOOL_NAME)


def clear_spool() -> int:
    """Empty the spool directory at start (what a crashed run left); returns the count."""
    return clear_spool_dir(spool_directory())


def source_client(settings: Settings) -> httpx.AsyncClient:
    """The HTTP client for sources: nothing in it is shared with the SCX client.

    No auth, no cookies kept (neither httpx's jar nor aiohttp's), no redirects followed by
    the library (``fetch_all`` checks each hop), no proxy or ``.netrc`` from the environment.
    """
    timeout = httpx.Timeout(
        settings.attachment_read_timeout,
        connect=settings.attachment_connect_timeout,
        pool=settings.attachment_download_timeout,
    )

    def session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )

    return httpx.AsyncClient(
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        cookies=CookieJar(policy=_NoCookies()),
        headers={"User-Agent": "scx-ticket-forwarder", "Accept-Encoding": "identity"},
        # trust_env stays on for the TLS context only (SSL_CERT_FILE / SSL_CERT_DIR).
        transport=AiohttpTransport(client=session),
    )


class _NoCookies(DefaultCookiePolicy):
    """A cookie policy that stores and returns nothing: no source's cookie is sent anywhere."""

    def set_ok(self, cookie: Cookie, request: urllib.request.Request) -> bool:
        return False

    def return_ok(self, cookie: Cookie, request: urllib.request.Request) -> bool:
        return False


class SourceUnavailable(TransientError):
    """One download failed in a way another attempt may cure (5xx, timeout, connection)."""


async def fetch_all(
    files: Sequence[AttachmentSource],
    settings: Settings,
    *,
    http: httpx.AsyncClient,
    sleep: Sleep | None = None,
) -> FetchedFiles:
    """Every file of ``files`` spooled and checked, in the same order (module docstring).

    ``http`` must come from ``source_client``. ``sleep`` (an ``async (seconds) -> None``,
    ``ScxClient.waits.sleep`` in the worker) is used for back-off waits so shutdown can end
    them with ``ShuttingDown``; ``asyncio.sleep`` by default. On any failure the files
    already spooled are closed before the error is raised.
    """
    allow = AllowList.parse(settings.attachment_allowed_urls)
    urls = {f.index: _checked_url(f, allow) for f in files if f.kind == "url"}
    done: dict[int, Fetched] = {}
    try:
        for file in files:
            if file.kind == "base64":
                done[file.index] = _fetched(file, await _decode(file, settings))
        fetcher = _Fetcher(settings, http, allow, sleep or asyncio.sleep)
        for file in files:
            if file.kind == "url":
                done[file.index] = _fetched(file, await fetcher.fetch(file, urls[file.index]))
    except BaseException:
        for fetched in done.values():
            fetched.close()
        raise
    return FetchedFiles(done[file.index] for file in files)


def _fetched(file: AttachmentSource, spooled: Spooled) -> Fetched:
    log.debug(
        "attachment.fetched",
        filename=file.original_filename,
        name=file.filename,
        source=file.where,
        size=spooled.size,
        sha256=spooled.sha256,
    )
    return Fetched(file.filename, file.original_filename, file.content_type, spooled)


def refused(file: AttachmentSource, reason: str, kind: str, **extra: Any) -> InvalidTicket:
    """The ``InvalidTicket`` for a file that can never be delivered.

    Detail: ``{"attachment": {"index", "filename" (the original), "name" (the upload name),
    "source" (redacted URL or "inline base64")}, "error": <reason>, "type": <kind>, ...}``.
    """
    detail: dict[str, Any] = {"attachment": _about(file), "error": reason, "type": kind, **extra}
    return InvalidTicket(f"attachment {file.original_filename!r}: {reason}", detail)


def _about(file: AttachmentSource) -> dict[str, Any]:
    """The file in a dead-letter or delay detail: where it stands, its names, its source."""
    return {
        "index": file.index,
        "filename": file.original_filename,
        "name": file.filename,
        "source": file.where,
    }


def _checked_url(file: AttachmentSource, allow: AllowList) -> NormalUrl:
    assert file.url is not None
    try:
        return allow.check(file.url)
    except RefusedUrl as exc:
        raise refused(file, str(exc), "source_refused") from None


async def _decode(file: AttachmentSource, settings: Settings) -> Spooled:
    text = file.content_base64 or ""
    max_bytes = settings.attachment_max_bytes
    if len(text) % 4:
        raise refused(file, _BAD_BASE64 + " (length not a multiple of 4)", "bad_base64")
    if len(text) // 4 * 3 - text[-2:].count("=") > max_bytes:
        raise refused(file, f"the file is larger than {max_bytes} bytes", "too_large")
    try:
        return await spool(_base64_chunks(text), max_bytes=max_bytes, directory=spool_directory())
    except binascii.Error as exc:
        raise refused(file, f"{_BAD_BASE64} ({exc})", "bad_base64") from None


_BAD_BASE64 = "content_base64 is not standard base64"


async def _base64_chunks(text: str) -> AsyncIterator[bytes]:
    for start in range(0, len(text), _BASE64_STEP):
        piece = text[start : start + _BASE64_STEP]
        if "=" in piece and start + _BASE64_STEP < len(text):
            raise binascii.Error("padding before the end")
        yield binascii.a2b_base64(piece, strict_mode=True)
        await asyncio.sleep(0)  # decoding 16 MiB takes a while; let the others run


class _Fetcher:
    """Downloads with the in-process retry budget; one instance per ``fetch_all``."""

    def __init__(
        self, settings: Settings, http: httpx.AsyncClient, allow: AllowList, sleep: Sleep
    ) -> None:
        self._settings = settings
        self._http = http
        self._allow = allow
        self._sleep = sleep

    async def fetch(self, file: AttachmentSource, url: NormalUrl) -> Spooled:
        settings = self._settings
        attempts = retrying(
            settings,
            retry=retry_if_exception_type(SourceUnavailable),
            seconds_left=settings.scx_retry_budget,
            sleep=self._sleep,
            before_sleep=_log_retry(file),
        )
        attempt_number = 0
        try:
            async for attempt in attempts:
                attempt_number = attempt.retry_state.attempt_number
                with attempt:
                    return await self._once(file, url)
        except SourceUnavailable as exc:
            reason = f"attachment {file.original_filename!r}: {exc.reason}"
            detail = {
                "attachment": _about(file),
                "status": exc.status,
                "downloadAttempts": attempt_number,
            }
            # attempts=0: no SCX call was made for this delivery.
            raise RetryLater(0, reason, detail) from None
        raise AssertionError("unreachable: tenacity either returns or reraises")

    async def _once(self, file: AttachmentSource, url: NormalUrl) -> Spooled:
        timeout = self._settings.attachment_download_timeout
        try:
            async with asyncio.timeout(timeout):
                return await self._follow(file, url)
        except TimeoutError:
            raise SourceUnavailable(f"download took longer than {timeout:g} s") from None
        except httpx.TimeoutException as exc:
            raise SourceUnavailable(f"timeout ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise SourceUnavailable(f"connection error ({type(exc).__name__})") from None

    async def _follow(self, file: AttachmentSource, url: NormalUrl) -> Spooled:
        for hop in range(MAX_REDIRECTS + 1):
            async with self._request(url) as response:
                status = response.status_code
                if status in _OK:
                    return await self._read(file, response)
                if status in _REDIRECTS:
                    if hop == MAX_REDIRECTS:
                        raise refused(
                            file, f"more than {MAX_REDIRECTS} redirects", "too_many_redirects"
                        )
                    url = self._redirect(file, url, response)
                    continue
                raise _status_error(file, status, response)
        raise AssertionError("unreachable: the last hop returns or raises")

    @asynccontextmanager
    async def _request(self, url: NormalUrl) -> AsyncIterator[httpx.Response]:
        # Built from the normal form: exactly what was checked is requested.
        request = self._http.build_request("GET", str(url))
        response = await self._http.send(request, stream=True)
        try:
            yield response
        finally:
            await response.aclose()

    def _redirect(
        self, file: AttachmentSource, url: NormalUrl, response: httpx.Response
    ) -> NormalUrl:
        location = response.headers.get("Location")
        if not location:
            raise refused(
                file, f"redirect (HTTP {response.status_code}) without Location", "source_status"
            )
        try:
            target = str(httpx.URL(str(url)).join(location))
        except (httpx.InvalidURL, ValueError):
            raise refused(file, "redirect to an unparseable URL", "redirect_refused") from None
        try:
            return self._allow.check(target)
        except RefusedUrl as exc:
            raise refused(file, f"redirect refused: {exc}", "redirect_refused") from None

    async def _read(self, file: AttachmentSource, response: httpx.Response) -> Spooled:
        max_bytes = self._settings.attachment_max_bytes
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise refused(
                file,
                f"the source declares {int(length)} bytes, more than {max_bytes}",
                "too_large",
            )
        served = response.headers.get("Content-Type")
        if served:
            _check_served_type(file, served)
        try:
            return await spool(
                response.aiter_bytes(), max_bytes=max_bytes, directory=spool_directory()
            )
        except TooLarge:
            raise refused(file, f"the file is larger than {max_bytes} bytes", "too_large") from None


def _check_served_type(file: AttachmentSource, served: str) -> None:
    media = media_type(served)
    if not allowed_type(media):
        raise refused(
            file, f"the source serves {media}, a type the API does not accept", "content_type"
        )
    if not same_kind(file.content_type, media):
        declared = media_type(file.content_type)
        raise refused(file, f"declared as {declared} but the source serves {media}", "content_type")


def _status_error(file: AttachmentSource, status: int, response: httpx.Response) -> Exception:
    if is_transient_status(status):
        hint = retry_after_header(response)
        return SourceUnavailable(
            f"the source answered HTTP {status}",
            status=status,
            retry_after=min(hint, MAX_RETRY_AFTER) if hint is not None else None,
        )
    return refused(file, f"the source answered HTTP {status}", "source_status", status=status)


def _log_retry(file: AttachmentSource) -> Callable[[RetryCallState], None]:
    started = time.monotonic()

    def log_it(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "attachment.retry",
            filename=file.original_filename,
            source=file.where,
            attempt=state.attempt_number,
            wait_s=round(state.next_action.sleep, 3) if state.next_action else None,
            reason=exc.reason if isinstance(exc, TransientError) else repr(exc),
            elapsed_s=round(time.monotonic() - started, 3),
        )

    return log_it
