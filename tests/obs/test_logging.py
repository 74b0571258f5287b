"""Log set-up: one JSON object per line, standard library loggers included, secrets blanked."""

from __future__ import annotations

import logging

import orjson
import pytest
import structlog

from worker.obs.logging import configure_logging


def lines(out: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.usefixtures("restore_logging")
def test_structlog_and_stdlib_lines_are_json(capfd: pytest.CaptureFixture[str]) -> None:
    # Configured in the test body: pytest's own logging set-up wraps each phase.
    configure_logging("INFO", "json")
    with structlog.contextvars.bound_contextvars(message_id="m-1"):
        structlog.get_logger("worker.test").info("ticket.forwarded", status=201)
    logging.getLogger("aio_pika.robust_connection").warning("connection lost")
    logging.getLogger("httpx").info("HTTP Request: POST ... 201")  # below httpx's floor

    records = lines(capfd.readouterr().out)
    assert len(records) == 2
    ours, theirs = records
    assert ours["event"] == "ticket.forwarded"
    assert ours["message_id"] == "m-1"
    assert ours["level"] == "info"
    assert "timestamp" in ours
    assert theirs["event"] == "connection lost"
    assert theirs["logger"] == "aio_pika.robust_connection"
    assert theirs["level"] == "warning"


@pytest.mark.usefixtures("restore_logging")
def test_secret_keys_are_blanked_should_one_slip_into_a_log_call(
    capfd: pytest.CaptureFixture[str],
) -> None:
    configure_logging("INFO", "json")
    structlog.get_logger().info("oops", authorization="Bearer abc", refresh_token="r-123")
    [record] = lines(capfd.readouterr().out)
    assert record["authorization"] == "***"
    assert record["refresh_token"] == "***"
