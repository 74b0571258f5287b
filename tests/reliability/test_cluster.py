"""A node of a 3-node RabbitMQ cluster dies in the middle of a backlog: nothing may be lost.

The cluster is ``scripts/cluster.sh`` (ports 5681-5683, beside the machine's own broker).
The backlog is published through node 1, so node 1 leads the quorum work queue (its leader
is placed where it was declared); the worker lists the nodes starting at node 2, so it is
connected to node 2. Stopping node 2 loses the worker its connection (it must move to
another node by itself); stopping node 1 loses the queue its leader (the worker stays
connected while the other members elect a new one). Node 3 is never stopped and answers
the test's questions.

``make test`` runs the short form: 1,000 events, the worker's node stopped. ``make cluster``
and ``make reliability`` (``CLUSTER_FULL=1``) run 3,000 events: the worker's node stopped,
the leader stopped, and the worker's node killed (SIGKILL: no goodbye to anyone).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Literal

import orjson
import pytest

from tests.conftest import Names
from tests.reliability.cluster import Cluster
from tests.reliability.conftest import MakeFleet, Record
from tests.reliability.harness import (
    FAST_RETRIES,
    DeadLetters,
    Fleet,
    delete_broker_objects,
    finish,
    make_backlog,
    publish_backlog,
    seconds,
    wait_until,
)
from worker.emulator import Emulator

FULL = os.environ.get("CLUSTER_FULL") == "1"
BACKLOG = 3000 if FULL else 1000
# The defaults: a lost connection returns at most AMQP_PREFETCH unacked deliveries.
PREFETCH, CONCURRENCY = 64, 32
RESUME_WITHIN_S = 30.0
PUBLISHER_NODE, WORKER_NODE, WITNESS_NODE = 1, 2, 3


@pytest.fixture
async def on_cluster(cluster: Cluster, names: Names) -> AsyncIterator[Cluster]:
    """The cluster for one scenario; afterwards every node runs again and its queues are gone."""
    yield cluster
    await cluster.start_all()
    await delete_broker_objects(names, cluster.endpoint(first=1, ask=WITNESS_NODE))


@pytest.mark.timeout(600)
async def test_node_of_the_worker_stopped_mid_backlog(
    names: Names, emulator: Emulator, make_fleet: MakeFleet, record: Record, on_cluster: Cluster
) -> None:
    """Cluster: the node the worker is connected to stopped mid-backlog."""
    await _lose_a_node("connected", names, emulator, make_fleet, record, on_cluster)


@pytest.mark.timeout(600)
@pytest.mark.skipif(not FULL, reason="long form only (make cluster, make reliability)")
async def test_leader_of_the_work_queue_stopped_mid_backlog(
    names: Names, emulator: Emulator, make_fleet: MakeFleet, record: Record, on_cluster: Cluster
) -> None:
    """Cluster: the node leading the quorum work queue stopped mid-backlog."""
    await _lose_a_node("leader", names, emulator, make_fleet, record, on_cluster)


@pytest.mark.timeout(600)
@pytest.mark.skipif(not FULL, reason="long form only (make cluster, make reliability)")
async def test_node_of_the_worker_killed_mid_backlog(
    names: Names, emulator: Emulator, make_fleet: MakeFleet, record: Record, on_cluster: Cluster
) -> None:
    """Cluster: the node the worker is connected to killed (SIGKILL) mid-backlog."""
    await _lose_a_node("connected", names, emulator, make_fleet, record, on_cluster, kill=True)


async def _lose_a_node(
    which: Literal["connected", "leader"],
    names: Names,
    emulator: Emulator,
    make_fleet: MakeFleet,
    record: Record,
    cluster: Cluster,
    *,
    kill: bool = False,
) -> None:
    # 100 ms per request: every slot busy when the node goes, and the backlog lasts.
    emulator.configure(latency=0.1)
    fleet = make_fleet(
        AMQP_URL=cluster.url(first=WORKER_NODE),
        AMQP_PREFETCH=str(PREFETCH),
        WORKER_CONCURRENCY=str(CONCURRENCY),
        **FAST_RETRIES,
    )
    dead = DeadLetters(names.dlq, cluster.endpoint(first=WITNESS_NODE, ask=WITNESS_NODE))
    try:
        backlog = make_backlog(BACKLOG, seed=31 if which == "connected" else 32)
        await publish_backlog(fleet.env | {"AMQP_URL": cluster.url(first=PUBLISHER_NODE)}, backlog)
        assert await cluster.leader(names.queue, ask=WITNESS_NODE) == PUBLISHER_NODE
        started = time.monotonic()
        worker = await fleet.start()
        assert _nodes_connected(fleet, cluster) == [WORKER_NODE]
        victim = WORKER_NODE if which == "connected" else PUBLISHER_NODE

        state = emulator.state
        tenth = len(backlog.valid) // 10
        await wait_until(
            lambda: len(state.accepted_counts) >= tenth, timeout=120, fleet=fleet, what="a tenth"
        )
        stopped = time.monotonic()
        stop = cluster.kill_node if kill else cluster.stop_node
        stopping = asyncio.create_task(stop(victim))
        if which == "connected":
            # The loss is when the worker sees it (a graceful stop takes a moment).
            await wait_until(
                lambda: worker.has_event("broker.disconnected") or stopping.done(),
                timeout=120,
                what="the worker to lose its connection",
            )
        at_loss, lost_at = state.accepted_total, time.monotonic()
        await stopping
        record.figures.update(node_stopped=victim, stop_took_s=seconds(time.monotonic() - stopped))
        # Resumed: more accepted than the worker could have held when the node went, so at
        # least one message was delivered after the loss.
        await wait_until(
            lambda: state.accepted_total > at_loss + PREFETCH,
            timeout=120,
            fleet=fleet,
            what="forwarding to resume after the node stopped",
        )
        resumed = time.monotonic() - lost_at
        record.figures["accepted_at_loss"] = at_loss
        record.figures["recovery_s"] = seconds(resumed)

        books = await finish(
            record.figures,
            backlog,
            emulator,
            dead,
            names,
            started=started,
            timeout=300,
            fleet=fleet,
        )
        connected = _nodes_connected(fleet, cluster)
        record.figures.update(
            nodes_connected=connected,
            acks_lost=fleet.count("ticket.ack_failed"),
        )
        if which == "leader":
            record.figures["new_leader"] = await cluster.leader(names.queue, ask=WITNESS_NODE)
        record.bounds = {
            "lost": "= 0",
            "duplicated": f"≤ {PREFETCH} (AMQP_PREFETCH: the unacked deliveries of one connection)",
            "resumed": f"≤ {RESUME_WITHIN_S:g} s after the stop, in the same process",
        }
        assert fleet.alive() == [worker], fleet.tail()
        books.check(max_duplicates=PREFETCH, fleet=fleet)
        assert resumed <= RESUME_WITHIN_S, f"forwarding resumed {resumed:.1f} s after the stop"
        if which == "connected":
            assert connected[0] == WORKER_NODE
            assert len(connected) >= 2, f"the worker never moved: {connected}\n{fleet.tail(5000)}"
            assert connected[-1] != WORKER_NODE, connected
        else:
            assert connected == [WORKER_NODE], "the worker lost a connection it should have kept"
    finally:
        await dead.close()


def _nodes_connected(fleet: Fleet, cluster: Cluster) -> list[int]:
    """The nodes the fleet's workers connected to, in order (``broker.connected`` lines)."""
    nodes = []
    for worker in fleet.processes:
        for line in worker.lines:
            if b'"event":"broker.connected"' in line:
                nodes.append(cluster.node_of(orjson.loads(line)["node"]))
    return nodes
