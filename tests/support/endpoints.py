"""Where the real parts are (the machine's RabbitMQ and Redis) and the emulator's credential."""

from __future__ import annotations

import os

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
# The machine's Redis, for the progress record's tests: each keeps to a prefix of its own.
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REFRESH_TOKEN = "test-refresh-token-s3cr3t"
