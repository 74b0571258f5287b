"""Fixtures of the reliability suite: broker clean-up, the worker fleet, the scenario record.

With ``RELIABILITY_REPORT=path.json`` every scenario writes its figures there, passed or
not; ``tests/reliability/report.py`` renders the file into ``docs/RELIABILITY.md``.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.reliability.cluster import Cluster, start_cluster
from tests.reliability.harness import DeadLetters, Fleet, MakeFleet, Record, delete_broker_objects
from tests.support.broker import Names
from worker.emulator import Emulator

REPORT_ENV = "RELIABILITY_REPORT"
_CALL_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_CALL_REPORT] = report
    return report


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Iterator[Record]:
    doc = (request.function.__doc__ or request.node.name).strip().splitlines()[0]
    entry = Record(title=doc.rstrip("."))
    started = time.monotonic()
    yield entry
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    report = request.node.stash.get(_CALL_REPORT, None)
    error = None
    if report is not None and report.failed:
        lines = [line for line in report.longreprtext.splitlines() if line.startswith("E ")]
        error = lines[0][1:].strip()[:300] if lines else "failed"
    _write(
        Path(path),
        request.node.name,
        {
            "title": entry.title,
            "passed": report is not None and report.passed,
            "error": error,
            "figures": entry.figures,
            "bounds": entry.bounds,
            "wall_s": round(time.monotonic() - started, 1),
        },
    )


def _write(path: Path, name: str, scenario: dict[str, Any]) -> None:
    results: dict[str, Any] = orjson.loads(path.read_bytes()) if path.exists() else {}
    results["run"] = results.get("run") or _machine()
    results["run"]["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    results.setdefault("scenarios", {})[name] = scenario
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))


def _machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        rabbitmq = subprocess.run(
            ["rabbitmqctl", "-q", "version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rabbitmq = "unknown"
    return {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {cpu}",
        "os": platform.platform(),
        "python": platform.python_version(),
        "rabbitmq": rabbitmq,
    }


@pytest.fixture
def names() -> Names:
    """Names of their own (``rel.``), so anything a scenario left behind is recognisable."""
    suffix = uuid.uuid4().hex[:12]
    return Names(exchange=f"rel.marketplace.{suffix}", queue=f"rel.scx.{suffix}")


@pytest.fixture
async def broker(names: Names) -> AsyncIterator[Names]:
    """The test's names; every queue and exchange made under them is deleted afterwards."""
    yield names
    await delete_broker_objects(names)


@pytest.fixture
async def dead(broker: Names) -> AsyncIterator[DeadLetters]:
    reader = DeadLetters(broker.dlq)
    yield reader
    await reader.close()


@pytest.fixture
async def make_fleet(broker: Names, emulator: Emulator) -> AsyncIterator[MakeFleet]:
    """``make_fleet(**env)``: a fleet of workers with that environment, killed at teardown."""
    fleets: list[Fleet] = []

    def make(**env: str) -> Fleet:
        fleet = Fleet(broker, emulator, **env)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        await fleet.close()


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    """The local 3-node cluster (``scripts/cluster.sh start``), started once per session.

    It is left running for the next session (``scripts/cluster.sh stop`` ends it); a session
    that cannot start it fails with the script's reason.
    """
    return start_cluster()
