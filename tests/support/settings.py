"""Settings for a test's own queues: the in-process worker's, and the operator tools'."""

from __future__ import annotations

from typing import Any

from tests.support.broker import TEST_RETRY_DELAYS, Names
from tests.support.endpoints import AMQP_URL, REFRESH_TOKEN
from worker.core.settings import Settings
from worker.emulator import Emulator


def make_settings(names: Names, emulator: Emulator, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "amqp_url": AMQP_URL,
        "amqp_exchange": names.exchange,
        "amqp_queue": names.queue,
        "amqp_binding_key": names.binding_key,
        "scx_api_url": emulator.base_url,
        "scx_refresh_token": REFRESH_TOKEN,
        "scx_max_requests_per_minute": 0,
        "scx_retry_initial_wait": 0.01,
        "scx_retry_max_wait": 0.2,
        "scx_retry_budget": 10.0,
        "worker_retry_delays": TEST_RETRY_DELAYS,
        "worker_shutdown_grace": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


def settings_for(names: Names, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "amqp_url": AMQP_URL,
        "amqp_exchange": names.exchange,
        "amqp_queue": names.queue,
        "amqp_binding_key": names.binding_key,
    }
    return Settings(**(values | overrides))
