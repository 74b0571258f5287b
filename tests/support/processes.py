"""``python -m worker`` as a child process: long-running (``spawn``, its stdout collected) or
run to completion (``cli``, its exit code and both streams)."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from typing import Any

import orjson

from tests.support.broker import Names
from tests.support.endpoints import AMQP_URL, REFRESH_TOKEN
from worker.emulator import Emulator


def worker_env(names: Names, emulator: Emulator, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AMQP_", "SCX_", "WORKER_", "METRICS_"))
    }
    env.update(
        # Many workers run side by side in these tests; the ones that test the metrics
        # server choose a free port themselves.
        METRICS_PORT="0",
        AMQP_URL=AMQP_URL,
        AMQP_EXCHANGE=names.exchange,
        AMQP_QUEUE=names.queue,
        SCX_API_URL=emulator.base_url,
        SCX_REFRESH_TOKEN=REFRESH_TOKEN,
        SCX_MAX_REQUESTS_PER_MINUTE="0",
        LOG_FORMAT="json",
    )
    env.update(extra)
    return env


class Process:
    """A child process whose stdout is collected while it runs."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[bytes] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.lines.append(line)

    def events(self) -> list[dict[str, Any]]:
        """Every stdout line parsed as JSON (fails the test on a line that is not)."""
        return [orjson.loads(line) for line in self.lines]

    def has_event(self, name: str) -> bool:
        return any(b'"event":"' + name.encode() + b'"' in line for line in self.lines)

    @property
    def output(self) -> str:
        return b"".join(self.lines).decode()

    async def wait(self, timeout: float = 30.0) -> int:
        code = await asyncio.wait_for(self.process.wait(), timeout)
        await self._reader
        return code


async def spawn(*args: str, env: dict[str, str]) -> Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    return Process(process)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json_lines(self) -> list[Any]:
        return [orjson.loads(line) for line in self.out.splitlines() if line.strip()]


def cli_env(names: Names, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AMQP_", "SCX_", "WORKER_", "METRICS_"))
    }
    env.update(AMQP_URL=AMQP_URL, AMQP_EXCHANGE=names.exchange, AMQP_QUEUE=names.queue)
    env.update(extra)
    return env


async def start_cli(names: Names, *args: str, **env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        env=cli_env(names, **env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def cli(names: Names, *args: str, **env: str) -> Result:
    process = await start_cli(names, *args, **env)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())
