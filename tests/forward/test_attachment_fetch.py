"""worker.forward.attachments.fetch_all against a real local HTTP server: every file
arrives whole and checked, or the message fails the way docs/guides/attachments.md says,
before any SCX call."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from tests.support.fileserver import FileServer
from worker.core.errors import InvalidTicket, RetryLater, ShuttingDown
from worker.core.settings import Settings, load_settings
from worker.forward.attachments import AttachmentSource, clear_spool, fetch_all, source_client
from worker.forward.attachments import fetch as fetch_module
from worker.scx.waits import Waits

MiB = 1024 * 1024
SECRET = "X-Amz-Signature=s3cr3t"


@pytest.fixture
async def server() -> AsyncIterator[FileServer]:
    server = await FileServer().start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def spool_dir(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    # Each test its own spool directory, so "nothing left behind" is about this test alone.
    monkeypatch.setattr(fetch_module, "spool_directory", lambda: tmp_path)
    return tmp_path


def settings_for(server: FileServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "attachment_allowed_urls": f"{server.base}/files/,{server.base}/redirect/,"
        f"{server.base}/status/,{server.base}/chunked/,{server.base}/declares/,"
        f"{server.base}/slow,{server.base}/typed/,{server.base}/flaky/,{server.base}/cookie/,"
        f"{server.base}/to",
        "scx_retry_attempts": 3,
        "scx_retry_budget": 5,
        "scx_retry_initial_wait": 0.01,
        "scx_retry_max_wait": 0.05,
    }
    return load_settings(**(values | overrides))


def url_source(
    url: str, name: str = "Red Dot (1).png", ctype: str = "image/png", index: int = 0
) -> AttachmentSource:
    return AttachmentSource(index, "Red_Dot_1_.png", name, ctype, "url", url=url)


def b64_source(text: str, ctype: str = "text/plain", index: int = 0) -> AttachmentSource:
    return AttachmentSource(
        index, "note.txt", "note (draft).txt", ctype, "base64", content_base64=text
    )


async def fetch(server: FileServer, *files: AttachmentSource, **overrides: Any) -> Any:
    settings = settings_for(server, **overrides)
    async with source_client(settings) as http:
        return await fetch_all(files, settings, http=http)


async def refusal(server: FileServer, *files: AttachmentSource, **overrides: Any) -> InvalidTicket:
    with pytest.raises(InvalidTicket) as info:
        await fetch(server, *files, **overrides)
    error = info.value
    assert "s3cr3t" not in str(error.summary) + repr(error.detail)
    return error


# ---- files arrive whole -------------------------------------------------------------------


async def test_url_and_base64_files_arrive_byte_identical(
    server: FileServer, spool_dir: Any
) -> None:
    big = os.urandom(3 * MiB + 17)
    small = b"hello\n"
    url = server.put("files/a.png", big) + "?" + SECRET
    files = [url_source(url), b64_source(base64.b64encode(small).decode(), index=1)]
    with await fetch(server, *files) as fetched:
        assert [f.sha256 for f in fetched] == [
            hashlib.sha256(big).hexdigest(),
            hashlib.sha256(small).hexdigest(),
        ]
        assert b"".join(fetched[0].spooled.chunks()) == big
        assert [(f.filename, f.original_filename, f.content_type) for f in fetched] == [
            ("Red_Dot_1_.png", "Red Dot (1).png", "image/png"),
            ("note.txt", "note (draft).txt", "text/plain"),
        ]
        assert [f.size for f in fetched] == [len(big), len(small)]
    assert os.listdir(spool_dir) == [], "closing removes every temporary file"
    [request] = server.seen
    assert request.query == SECRET, "the pre-signed query is sent as received"


async def test_exactly_the_normal_form_is_requested(server: FileServer, spool_dir: Any) -> None:
    server.put("files/b.png", b"png")
    url = f"HTTP://127.0.0.1:{server.port}/x/../files/./%62.png"
    with await fetch(server, url_source(url)) as fetched:
        assert fetched[0].size == 3
    assert [s.path for s in server.seen] == ["/files/b.png"]


async def test_no_credentials_or_cookies_reach_a_source(server: FileServer, spool_dir: Any) -> None:
    server.put("files/c.png", b"png")
    # The source sets a cookie on the way, then is asked again: nothing comes back to it.
    files = [
        url_source(server.url("cookie/files/c.png")),
        url_source(server.url("files/c.png"), index=1),
    ]
    with await fetch(server, *files):
        pass
    assert len(server.seen) == 3
    for seen in server.seen:
        names = {name.lower() for name in seen.headers}
        assert not names & {"authorization", "cookie", "proxy-authorization"}, seen.headers
        assert seen.headers.get("Accept-Encoding") == "identity"


async def test_proxy_and_netrc_settings_of_the_environment_are_not_used(
    server: FileServer, spool_dir: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy that does not exist: used, the download would fail; .netrc: used, it would
    # send these credentials to the source.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password s3cr3t\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    server.put("files/p.png", b"png")
    with await fetch(server, url_source(server.url("files/p.png"))) as fetched:
        assert fetched[0].size == 3
    [seen] = server.seen
    assert "authorization" not in {name.lower() for name in seen.headers}


async def test_allowed_redirects_are_followed(server: FileServer, spool_dir: Any) -> None:
    server.put("files/d.png", b"png")
    with await fetch(server, url_source(server.url("redirect/3/files/d.png"))) as fetched:
        assert fetched[0].size == 3
    assert [s.path for s in server.seen][-1] == "/files/d.png"


async def test_a_source_without_content_type_is_taken_at_its_word(
    server: FileServer, spool_dir: Any
) -> None:
    server.put("files/e.bin", b"%PDF", content_type=None)
    with await fetch(server, url_source(server.url("files/e.bin"), ctype="application/pdf")) as f:
        assert f[0].content_type == "application/pdf"


async def test_a_png_served_as_jpeg_is_an_image_and_keeps_the_declared_type(
    server: FileServer, spool_dir: Any
) -> None:
    server.put("files/f.png", b"jpeg", content_type="image/jpeg")
    with await fetch(server, url_source(server.url("files/f.png"))) as fetched:
        assert fetched[0].content_type == "image/png"


async def test_a_file_of_exactly_the_limit_passes(server: FileServer, spool_dir: Any) -> None:
    server.put("files/g.png", b"x" * 1000)
    with await fetch(server, url_source(server.url("files/g.png")), attachment_max_bytes=1000) as f:
        assert f[0].size == 1000


# ---- refusals: InvalidTicket, nothing downloaded that need not be ----------------------------


@pytest.mark.parametrize(
    "path",
    [
        "elsewhere/a.png",  # outside every prefix
        "files/../elsewhere/a.png",  # .. escaping the prefix
        "files/%2e%2e/elsewhere/a.png",
        "files-evil/a.png",
    ],
)
async def test_urls_outside_the_allow_list_are_refused_before_any_request(
    server: FileServer, spool_dir: Any, path: str
) -> None:
    server.put("elsewhere/a.png", b"png")
    error = await refusal(server, url_source(f"{server.base}/{path}?{SECRET}"))
    assert error.detail["type"] == "source_refused"
    assert error.detail["attachment"]["filename"] == "Red Dot (1).png"
    assert "Red Dot (1).png" in error.summary
    assert server.seen == []


async def test_userinfo_is_refused(server: FileServer, spool_dir: Any) -> None:
    url = f"http://user:s3cr3t@127.0.0.1:{server.port}/files/a.png"
    error = await refusal(server, url_source(url))
    assert "userinfo" in error.detail["error"]
    assert server.seen == []


async def test_one_refused_url_means_nothing_is_downloaded(
    server: FileServer, spool_dir: Any
) -> None:
    server.put("files/a.png", b"png")
    files = [url_source(server.url("files/a.png")), url_source("https://evil.example/x", index=1)]
    error = await refusal(server, *files)
    assert error.detail["attachment"]["index"] == 1
    assert server.seen == []


async def test_an_empty_allow_list_refuses_every_url(server: FileServer, spool_dir: Any) -> None:
    error = await refusal(server, url_source(server.url("files/a.png")), attachment_allowed_urls="")
    assert "ATTACHMENT_ALLOWED_URLS is empty" in error.summary


async def test_a_redirect_to_a_refused_url_is_refused(server: FileServer, spool_dir: Any) -> None:
    server.put("elsewhere/a.png", b"png")
    for target in [f"{server.base}/elsewhere/a.png", f"http://u:p@127.0.0.1:{server.port}/files/a"]:
        server.seen.clear()
        url = server.url("to") + "?location=" + httpx.QueryParams({"x": target})["x"]
        error = await refusal(server, url_source(url))
        assert error.detail["type"] == "redirect_refused"
        assert [s.path for s in server.seen] == ["/to"], "the refused target is never asked"


async def test_more_than_three_redirects_are_refused(server: FileServer, spool_dir: Any) -> None:
    server.put("files/a.png", b"png")
    error = await refusal(server, url_source(server.url("redirect/4/files/a.png")))
    assert error.detail["type"] == "too_many_redirects"
    assert len(server.seen) == 4


@pytest.mark.parametrize("status", [400, 403, 404, 410])
async def test_a_4xx_from_the_source_is_permanent(
    server: FileServer, spool_dir: Any, status: int
) -> None:
    error = await refusal(server, url_source(server.url(f"status/{status}") + "?" + SECRET))
    assert error.detail["status"] == status
    assert error.summary == f"attachment 'Red Dot (1).png': the source answered HTTP {status}"
    assert len(server.seen) == 1, "a permanent failure is not retried"
    assert error.detail["attachment"]["source"] == server.url(f"status/{status}")


async def test_too_big_when_declared_is_refused_before_reading(
    server: FileServer, spool_dir: Any
) -> None:
    error = await refusal(
        server, url_source(server.url("declares/1001")), attachment_max_bytes=1000
    )
    assert error.detail["type"] == "too_large"
    assert "declares 1001 bytes" in error.detail["error"]


async def test_too_big_when_undeclared_is_aborted_while_streaming(
    server: FileServer, spool_dir: Any
) -> None:
    url = url_source(server.url(f"chunked/{17 * MiB}"), ctype="text/plain")
    error = await refusal(server, url)
    assert error.detail["type"] == "too_large"
    assert os.listdir(spool_dir) == []


async def test_the_default_limit_is_16_mib(server: FileServer, spool_dir: Any) -> None:
    url = url_source(server.url(f"chunked/{16 * MiB + 1}"), ctype="text/plain")
    error = await refusal(server, url)
    assert f"larger than {16 * MiB} bytes" in error.detail["error"]


@pytest.mark.parametrize(
    ("served", "declared", "why"),
    [
        ("application/octet-stream", "image/png", "a type the API does not accept"),
        ("text/html", "text/plain", "a type the API does not accept"),
        ("application/pdf", "text/plain", "declared as text/plain but the source serves"),
    ],
)  # fmt: skip
async def test_a_disallowed_or_disagreeing_served_type_is_refused(
    server: FileServer, spool_dir: Any, served: str, declared: str, why: str
) -> None:
    error = await refusal(server, url_source(server.url(f"typed/{served}"), ctype=declared))
    assert error.detail["type"] == "content_type"
    assert why in error.detail["error"]


@pytest.mark.parametrize(
    "text",
    [
        "QQ=",  # length not a multiple of 4
        "QQ",  # padding missing
        "QQ==QQ==",  # data after padding
        "QUJD\nREVG",  # a line break
        "QUJD REVG",
        "QUJD-_==",  # the URL-safe alphabet
        "Q===",
    ],
)
async def test_bad_base64_is_refused(server: FileServer, spool_dir: Any, text: str) -> None:
    error = await refusal(server, b64_source(text))
    assert error.detail["type"] == "bad_base64"
    assert error.detail["attachment"] == {
        "index": 0,
        "filename": "note (draft).txt",
        "name": "note.txt",
        "source": "inline base64",
    }


async def test_padding_inside_a_long_text_is_refused(server: FileServer, spool_dir: Any) -> None:
    step = fetch_module._BASE64_STEP
    text = "QUJD" * (step // 4 - 1) + "QQ==" + "QUJD" * 10  # "=" at the end of one step
    error = await refusal(server, b64_source(text))
    assert error.detail["type"] == "bad_base64"


async def test_base64_over_the_limit_is_refused(server: FileServer, spool_dir: Any) -> None:
    text = base64.b64encode(b"x" * 1001).decode()
    error = await refusal(server, b64_source(text), attachment_max_bytes=1000)
    assert error.detail["type"] == "too_large"
    with await fetch(
        server, b64_source(base64.b64encode(b"x" * 1000).decode()), attachment_max_bytes=1000
    ) as f:
        assert f[0].size == 1000


async def test_a_late_failure_closes_what_was_fetched(server: FileServer, spool_dir: Any) -> None:
    server.put("files/a.png", os.urandom(MiB))
    files = [url_source(server.url("files/a.png")), url_source(server.url("status/404"), index=1)]
    await refusal(server, *files)
    assert os.listdir(spool_dir) == []


# ---- transient failures: retried in process, then RetryLater ------------------------------


async def test_a_503_is_retried_and_then_succeeds(server: FileServer, spool_dir: Any) -> None:
    server.put("files/a.png", b"png")
    with (
        capture_logs() as logs,
        await fetch(server, url_source(server.url("flaky/2/files/a.png?" + SECRET))) as f,
    ):
        assert f[0].size == 3
    assert len(server.seen) == 3
    retries = [entry for entry in logs if entry["event"] == "attachment.retry"]
    assert len(retries) == 2
    assert all("s3cr3t" not in repr(entry) for entry in retries)


async def test_a_503_that_lasts_becomes_retry_later(server: FileServer, spool_dir: Any) -> None:
    with pytest.raises(RetryLater) as info:
        await fetch(server, url_source(server.url("status/503") + "?" + SECRET))
    later = info.value
    assert later.attempts == 0, "no SCX call was made"
    assert later.detail["status"] == 503
    assert later.detail["downloadAttempts"] == 3
    assert "Red Dot (1).png" in later.reason
    assert "503" in later.reason
    assert "s3cr3t" not in later.reason + repr(later.detail)
    assert len(server.seen) == 3


async def test_a_timeout_is_transient(server: FileServer, spool_dir: Any) -> None:
    server.slow_seconds = 3
    with pytest.raises(RetryLater) as info:
        await fetch(
            server,
            url_source(server.url("slow"), ctype="text/plain"),
            attachment_read_timeout=0.2,
            scx_retry_attempts=2,
        )
    assert "timeout" in info.value.reason.lower()


async def test_the_whole_download_has_a_deadline(server: FileServer, spool_dir: Any) -> None:
    server.slow_seconds = 3
    with pytest.raises(RetryLater) as info:
        await fetch(
            server,
            url_source(server.url("slow"), ctype="text/plain"),
            attachment_download_timeout=0.2,
            scx_retry_attempts=1,
        )
    assert "longer than 0.2 s" in info.value.reason


async def test_a_connection_error_is_transient(server: FileServer, spool_dir: Any) -> None:
    port = server.port
    await server.stop()
    settings = settings_for(server, scx_retry_attempts=2)
    async with source_client(settings) as http:
        with pytest.raises(RetryLater) as info:
            await fetch_all(
                [url_source(f"http://127.0.0.1:{port}/files/a.png")], settings, http=http
            )
    # httpx-aiohttp reports a refused connection as ConnectTimeout: transient either way.
    assert "Connect" in info.value.reason
    assert info.value.detail["status"] is None


async def test_shutdown_ends_a_back_off_wait(server: FileServer, spool_dir: Any) -> None:
    waits = Waits()
    waits.interrupt()
    settings = settings_for(server, scx_retry_initial_wait=5, scx_retry_max_wait=5)
    async with source_client(settings) as http:
        with pytest.raises(ShuttingDown):
            await fetch_all(
                [url_source(server.url("status/503"))], settings, http=http, sleep=waits.sleep
            )
    assert len(server.seen) == 1


def test_clear_spool_empties_the_worker_directory() -> None:
    directory = fetch_module.spool_directory()
    (directory / "left-by-a-crash").write_bytes(b"x")
    assert clear_spool() >= 1
    assert list(directory.iterdir()) == []
