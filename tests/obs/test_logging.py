"""Log set-up: one JSON object per line, standard library loggers included, secrets blanked."""

from __future__ import annotations

import asyncio
import logging

import aiormq
import orjson
import pytest
import structlog
from aio_pika.tools import OneShotCallback

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


class Channel:
    """Stands in for aio-pika's RobustChannel: its restore meets a connection closed again."""

    async def _on_close(self, closing: object) -> None:
        raise aiormq.exceptions.ChannelInvalidStateError("writer is None")

    async def _on_open(self, opened: object) -> None:
        raise RuntimeError("something else broke")


@pytest.mark.usefixtures("restore_logging")
async def test_a_channel_closed_during_its_restore_is_a_warning_not_an_error(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Issue 21: aio-pika's ``Callback ... RobustChannel._on_close error:
    ChannelInvalidStateError`` fired error alerts on every broker restart."""
    configure_logging("INFO", "json")
    channel = Channel()
    closing = OneShotCallback(channel._on_close)
    closing(asyncio.get_running_loop().create_future())
    await asyncio.wait_for(closing.wait(), 5)
    other = OneShotCallback(channel._on_open)
    other(None)
    await asyncio.wait_for(other.wait(), 5)

    restore, unrelated = lines(capfd.readouterr().out)
    assert restore == {
        "event": "broker.channel_restore_failed",
        "level": "warning",
        "callback": "Channel._on_close",
        "error": "ChannelInvalidStateError: writer is None",
        "detail": "the channel is restored on the next connect",
        "timestamp": restore["timestamp"],
    }
    # Any other failing callback is still the error aio-pika says it is.
    assert unrelated["level"] == "error"
    assert unrelated["logger"] == "aio_pika.tools"
    assert "RuntimeError: something else broke" in str(unrelated["event"])
