"""Who is calling: ``--version``, the ``User-Agent`` the API sees, ``build_info``, one version."""

from __future__ import annotations

import asyncio
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

import orjson
from aio_pika.abc import AbstractChannel
from prometheus_client import REGISTRY, generate_latest
from pydantic import SecretStr

from tests.support.broker import Names, publish
from tests.support.endpoints import REFRESH_TOKEN
from tests.support.examples import SEED_TICKET
from tests.support.forwarder import StartWorker
from tests.support.polling import wait_for
from tests.support.settings import make_settings
from worker import USER_AGENT, __version__
from worker.emulator import Emulator
from worker.obs import metrics
from worker.ops.check import check_token

ROOT = Path(__file__).resolve().parent.parent


def test_the_version_is_the_package_metadata() -> None:
    assert __version__ == version("scx-ticket-forwarder")
    assert f"scx-forwarder/{__version__}" == USER_AGENT


async def run(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_version_flag_as_a_process() -> None:
    script = shutil.which("scx-forwarder", path=str(Path(sys.executable).parent))
    assert script is not None, "the console script is installed next to the interpreter"
    for command in ([script], [sys.executable, "-m", "worker"]):
        assert await run(*command, "--version") == (0, f"scx-forwarder {__version__}\n")


async def test_every_api_call_names_the_forwarder_and_its_version(
    start_worker: StartWorker, emulator: Emulator, channel: AbstractChannel, names: Names
) -> None:
    await start_worker()
    await publish(channel, names, [orjson.dumps(SEED_TICKET)])
    await wait_for(lambda: emulator.state.accepted_total == 1, what="the ticket")
    assert emulator.state.request_headers["user-agent"] == USER_AGENT
    assert emulator.state.headers_by_route["auth"]["user-agent"] == USER_AGENT


async def test_check_sends_the_same_auth_request(emulator: Emulator, names: Names) -> None:
    result = await check_token(make_settings(names, emulator), SecretStr(REFRESH_TOKEN))
    assert result.status == "ok"
    headers = emulator.state.headers_by_route["auth"]
    assert headers["user-agent"] == USER_AGENT
    assert headers["content-type"] == "application/x-www-form-urlencoded"
    assert headers["accept-language"] == "en"


def test_build_info_metric() -> None:
    assert [m.name for m in metrics.BUILD_INFO.describe()] == ["scx_forwarder_build_info"]
    value = REGISTRY.get_sample_value("scx_forwarder_build_info", {"version": __version__})
    assert value == 1.0
    exposition = generate_latest(REGISTRY).decode()
    assert f'scx_forwarder_build_info{{version="{__version__}"}} 1.0' in exposition


def test_license_and_changelog_match_the_metadata() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'license = { text = "MIT" }' in pyproject
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog
    assert f"## [{version('scx-ticket-forwarder')}]" in changelog
