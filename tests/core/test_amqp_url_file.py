"""AMQP_URL_FILE: the broker URL (with its password) from a file, validated as AMQP_URL is.

The worker reading it and connecting is covered as a real process in
tests/test_alert_metrics.py (the Deployment mounts the URL this way).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.core.settings import ConfigError, load_settings

PASSWORD = "s3cret-pa55"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(("AMQP_", "SCX_", "WORKER_", "LOG_")):
            monkeypatch.delenv(key)


@pytest.fixture
def url_file(tmp_path: Path) -> Path:
    path = tmp_path / "amqp-url"
    path.write_text(f"  amqp://forwarder:{PASSWORD}@rabbitmq.example:5671/shop \n")
    return path


def test_the_url_is_read_from_the_file_and_stripped(url_file: Path) -> None:
    settings = load_settings(amqp_url_file=url_file)
    assert (
        settings.amqp_url.get_secret_value()
        == f"amqp://forwarder:{PASSWORD}@rabbitmq.example:5671/shop"
    )
    assert settings.amqp_url_redacted == "amqp://forwarder:***@rabbitmq.example:5671/shop"
    assert PASSWORD not in repr(settings)


def test_from_the_environment(monkeypatch: pytest.MonkeyPatch, url_file: Path) -> None:
    monkeypatch.setenv("AMQP_URL_FILE", str(url_file))
    assert load_settings().amqp_url_redacted == "amqp://forwarder:***@rabbitmq.example:5671/shop"


def test_setting_both_is_refused(monkeypatch: pytest.MonkeyPatch, url_file: Path) -> None:
    monkeypatch.setenv("AMQP_URL", "amqp://guest:guest@localhost:5672/")
    monkeypatch.setenv("AMQP_URL_FILE", str(url_file))
    with pytest.raises(ConfigError, match="set AMQP_URL or AMQP_URL_FILE, not both"):
        load_settings()


def test_a_missing_or_empty_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"AMQP_URL_FILE: cannot read .*missing: No such file"):
        load_settings(amqp_url_file=tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match=r"AMQP_URL_FILE: .*empty is empty"):
        load_settings(amqp_url_file=tmp_path / "empty")
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_settings(amqp_url_file=tmp_path / "binary")


def test_the_content_is_validated_as_amqp_url_and_never_echoed(tmp_path: Path) -> None:
    path = tmp_path / "amqp-url"
    path.write_text(f"http://forwarder:{PASSWORD}@rabbitmq/\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(amqp_url_file=path)
    message = str(raised.value)
    assert "AMQP_URL (read from AMQP_URL_FILE)" in message
    assert PASSWORD not in message
