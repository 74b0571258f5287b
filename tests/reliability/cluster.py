"""The local 3-node RabbitMQ cluster of ``scripts/cluster.sh``, as the tests drive it.

``start_cluster()`` runs ``scripts/cluster.sh start`` (idempotent) and fails the session
with the script's own words when the cluster cannot start: a cluster test is never skipped
for want of a cluster. Stopping and starting nodes is asynchronous, so the in-process
emulator keeps answering while a node goes down.
"""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from yarl import URL

from tests.reliability.harness import Endpoint

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cluster.sh"
NODES = (1, 2, 3)


def start_cluster() -> Cluster:
    try:
        started = subprocess.run(
            [str(SCRIPT), "start"], capture_output=True, text=True, timeout=400, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"scripts/cluster.sh start: {exc}", pytrace=False)
    if started.returncode != 0:
        pytest.fail(
            f"scripts/cluster.sh start exited {started.returncode}:\n{started.stderr[-3000:]}",
            pytrace=False,
        )
    urls = subprocess.run(
        [str(SCRIPT), "urls"], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    return Cluster(tuple(urls.split(",")))


@dataclass(frozen=True)
class Cluster:
    urls: tuple[str, ...]  # node 1, 2, 3

    def url(self, first: int) -> str:
        """``AMQP_URL`` listing every node, starting with node ``first``."""
        order = [*NODES[first - 1 :], *NODES[: first - 1]]
        return ",".join(self.urls[n - 1] for n in order)

    def endpoint(self, *, first: int, ask: int) -> Endpoint:
        """The cluster as a scenario's broker; ``rabbitmqctl`` asks node ``ask``."""
        return Endpoint(self.url(first), node_name(ask))

    def node_of(self, url: str) -> int:
        port = URL(url).port
        ports = [URL(u).port for u in self.urls]
        assert port in ports, f"{url} is not a node of the cluster {self.urls}"
        return ports.index(port) + 1

    async def stop_node(self, n: int) -> None:
        await _script("stop-node", str(n))

    async def kill_node(self, n: int) -> None:
        """SIGKILL node ``n``'s Erlang VM: a crash, no goodbye to its clients or peers."""
        await _script("kill-node", str(n))

    async def start_node(self, n: int) -> None:
        await _script("start-node", str(n))

    async def start_all(self) -> None:
        await _script("start")

    async def leader(self, queue: str, *, ask: int) -> int:
        """The node whose member of the quorum queue ``queue`` leads it."""
        listing = await Endpoint(node=node_name(ask)).ctl(
            "list_queues", "--no-table-headers", "name", "leader"
        )
        for line in listing.splitlines():
            name, _, leader = line.partition("\t")
            if name == queue:
                return int(leader.strip().split("@")[0].rsplit("-", 1)[1])
        pytest.fail(f"queue {queue} not found on node {ask}:\n{listing}")


def node_name(n: int) -> str:
    return f"scx-node-{n}@localhost"


async def _script(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        str(SCRIPT), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    assert process.returncode == 0, f"scripts/cluster.sh {' '.join(args)}:\n{out.decode()}"
