"""worker.core.sources: URL normal form, the allow-list, redaction."""

from __future__ import annotations

import pytest

from worker.core.settings import ConfigError, load_settings
from worker.core.sources import AllowList, RefusedUrl, normalise, prefix_url, redact

ALLOW = AllowList.parse(["https://files.example.com/tickets/", "http://127.0.0.1:8080/f"])


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("HTTPS://Files.Example.COM/tickets/a.png", "https://files.example.com/tickets/a.png"),
        ("https://files.example.com:443/tickets/a.png", "https://files.example.com/tickets/a.png"),
        ("http://files.example.com:80/x", "http://files.example.com/x"),
        ("https://files.example.com:8443/x", "https://files.example.com:8443/x"),
        ("https://files.example.com./x", "https://files.example.com/x"),
        ("https://files.example.com", "https://files.example.com/"),
        ("https://h/a/./b/../c", "https://h/a/c"),
        ("https://h/a/b/..", "https://h/a/"),
        ("https://h/../../a", "https://h/a"),
        ("https://h/%2e%2E/a/%2E/b", "https://h/a/b"),
        ("https://h/%7euser/%41%62", "https://h/~user/Ab"),
        ("https://h/a%c3%a4", "https://h/a%C3%A4"),
        ("https://h/ä", "https://h/%C3%A4"),
        ("https://h/x?X-Amz-Signature=abc&b=%2F#frag", "https://h/x?X-Amz-Signature=abc&b=%2F"),
        ("https://bücher.example/x", "https://xn--bcher-kva.example/x"),
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
    ],
)
def test_normal_form(url: str, normal: str) -> None:
    assert str(normalise(url)) == normal


@pytest.mark.parametrize(
    "url",
    [
        "ftp://files.example.com/tickets/a",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "https://user:pw@files.example.com/tickets/a",
        "https://@files.example.com/tickets/a",
        "https://user@files.example.com/tickets/a",
        "https:///tickets/a",
        "https://files.example.com:99999/tickets/a",
        "https://files.example.com:x/tickets/a",
        "https://files.example.com/tickets/a b",
        "https://files.example.com/tickets/a\n",
        "https://files.example.com\\@evil.example/tickets/a",
        "https://files.example.com/tickets/..%2F..%2Fadmin",
        "https://files.example.com/tickets/..%5cadmin",
        "https://files.example.com/tickets/%zz",
        "https://exa mple.com/",
    ],
)
def test_refused_outright(url: str) -> None:
    with pytest.raises(RefusedUrl) as info:
        normalise(url)
    assert "example" not in str(info.value), "the reason never quotes the URL"


@pytest.mark.parametrize(
    "url",
    [
        "https://files.example.com/tickets/a.png",
        "https://FILES.example.com:443/tickets/sub/a.png?sig=1",
        "https://files.example.com/other/../tickets/a.png",
        "https://files.example.com/tickets/%61.png",
        "http://127.0.0.1:8080/f",
        "http://127.0.0.1:8080/f/a.txt",
    ],
)
def test_allowed(url: str) -> None:
    ALLOW.check(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://files.example.com/tickets/../admin/a.png",  # .. escapes the prefix
        "https://files.example.com/tickets/%2e%2e/admin",  # encoded dots, too
        "https://files.example.com/tickets/.%2E/admin",
        "https://files.example.com/tickets",  # the prefix ends with /: only below it
        "https://files.example.com/ticketsx/a",
        "http://files.example.com/tickets/a",  # scheme
        "https://files.example.com:8443/tickets/a",  # port
        "https://evil.files.example.com/tickets/a",  # no subdomain wildcard
        "https://files.example.com.evil.example/tickets/a",
        "http://127.0.0.1:8080/f-evil",  # segment boundary
        "http://127.0.0.1:8080/fa",
        "http://127.0.0.1/f/a",  # default port is not 8080
        "http://localhost:8080/f/a",  # another name for the host is another host
        "https://user:pw@files.example.com/tickets/a",
    ],
)
def test_not_allowed(url: str) -> None:
    with pytest.raises(RefusedUrl):
        ALLOW.check(url)


def test_an_empty_list_refuses_every_url() -> None:
    with pytest.raises(RefusedUrl, match="ATTACHMENT_ALLOWED_URLS is empty"):
        AllowList().check("https://files.example.com/tickets/a")


@pytest.mark.parametrize(
    "prefix",
    ["files.example.com/tickets/", "ftp://h/", "https://u:p@h/", "https://h/x?a=1", "https://h/#x"],
)
def test_bad_prefixes(prefix: str) -> None:
    with pytest.raises(ValueError):
        prefix_url(prefix)


def test_settings_read_the_list_and_name_a_bad_entry_by_number() -> None:
    settings = load_settings(attachment_allowed_urls=" https://a.example/x/ ,, http://b.example ")
    assert settings.attachment_allowed_urls == ("https://a.example/x/", "http://b.example")
    assert load_settings().attachment_allowed_urls == ()
    with pytest.raises(ConfigError) as info:
        load_settings(attachment_allowed_urls="https://a.example/,https://u:secret@b.example/")
    assert "ATTACHMENT_ALLOWED_URLS" in str(info.value)
    assert "entry 2" in str(info.value)
    assert "secret" not in str(info.value)


def test_max_bytes_can_be_lowered_not_raised() -> None:
    assert load_settings().attachment_max_bytes == 16 * 1024 * 1024
    assert load_settings(attachment_max_bytes=1000).attachment_max_bytes == 1000
    with pytest.raises(ConfigError, match="ATTACHMENT_MAX_BYTES"):
        load_settings(attachment_max_bytes=16 * 1024 * 1024 + 1)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://files.example.com/t/a.png?X-Amz-Signature=s3cr3t", "https://files.example.com/t/a.png"),
        ("https://user:s3cr3t@files.example.com/t/a.png", "https://files.example.com/t/a.png"),
        ("https://files.example.com/t/a.png#s3cr3t", "https://files.example.com/t/a.png"),
        ("ftp://user:s3cr3t@h/x?s3cr3t", "ftp://h/x"),
        ("https://h/a b\n?s3cr3t", "https://h/a%20b"),
    ],
)  # fmt: skip
def test_redact_drops_query_userinfo_and_fragment(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert "s3cr3t" not in redact(url)
