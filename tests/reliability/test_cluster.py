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
the leader stopped, and the worker's node killed (SIGKILL: no goodbye to anyone); and the
node the events bridge is connected to stopped under 2,000 seller events.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Literal

import aio_pika
import orjson
import pytest

from tests.reliability.cluster import Cluster
from tests.reliability.harness import (
    FAST_RETRIES,
    DeadLetters,
    Fleet,
    MakeFleet,
    Record,
    delete_broker_objects,
    finish,
    make_backlog,
    publish_backlog,
    seconds,
    wait_until,
)
from tests.support.bridge import Tap, bridge_env, check_published, start_bridge
from tests.support.bridge import make_backlog as make_events
from tests.support.broker import Names
from tests.support.polling import wait_for
from tests.support.processes import Process
from worker.amqp.broker import connect, connect_robust
from worker.core.settings import Settings
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


@pytest.mark.timeout(600)
async def test_the_one_node_the_worker_knows_restarted_mid_backlog(
    names: Names, emulator: Emulator, make_fleet: MakeFleet, record: Record, on_cluster: Cluster
) -> None:
    """Broker restarted mid-backlog: the one node in the worker's AMQP_URL stopped, then started.

    A single broker restarting, as the worker sees it: it has nowhere else to go and must
    wait for that node to come back. Node 2 of the cluster plays it (the machine's own broker
    on 5672 is never stopped); the queue's other members keep what it held meanwhile.
    """
    cluster = on_cluster
    prefetch = 32
    # 200 ms per request: the backlog outlasts the time a graceful stop takes to drop the
    # worker's connection, so there is work left to resume.
    emulator.configure(latency=0.2)
    fleet = make_fleet(
        AMQP_URL=cluster.urls[WORKER_NODE - 1], AMQP_PREFETCH=str(prefetch), **FAST_RETRIES
    )
    dead = DeadLetters(names.dlq, cluster.endpoint(first=WITNESS_NODE, ask=WITNESS_NODE))
    try:
        backlog = make_backlog(BACKLOG, seed=13)
        await publish_backlog(fleet.env | {"AMQP_URL": cluster.url(first=PUBLISHER_NODE)}, backlog)
        started = time.monotonic()
        worker = await fleet.start()
        state = emulator.state
        tenth = len(backlog.valid) // 10
        await wait_until(
            lambda: len(state.accepted_counts) >= tenth, timeout=120, fleet=fleet, what="a tenth"
        )
        stopped = time.monotonic()
        stopping = asyncio.create_task(cluster.stop_node(WORKER_NODE))
        await wait_until(
            lambda: worker.has_event("broker.disconnected") or stopping.done(),
            timeout=120,
            what="the worker to lose its connection",
        )
        at_loss = state.accepted_total
        await stopping
        await cluster.start_node(WORKER_NODE)
        back = time.monotonic()
        record.figures.update(accepted_at_loss=at_loss, broker_down_s=seconds(back - stopped))
        # Resumed: more accepted than the worker could have held when its node went.
        await wait_until(
            lambda: state.accepted_total > at_loss + prefetch,
            timeout=120,
            fleet=fleet,
            what="forwarding to resume after the restart",
        )
        record.figures["recovery_s"] = seconds(time.monotonic() - back)
        books = await finish(
            record.figures,
            backlog,
            emulator,
            dead,
            names,
            started=started,
            timeout=240,
            fleet=fleet,
        )
        record.figures["worker_restarts"] = len(fleet.processes) - 1
        record.bounds = {
            "lost": "= 0",
            "duplicated": f"≤ {prefetch} (AMQP_PREFETCH: the unacked messages redelivered)",
            "worker": "the same process reconnects by itself",
        }
        assert fleet.alive() == [worker], fleet.tail()
        assert _nodes_connected(fleet, cluster) == [WORKER_NODE, WORKER_NODE]
        books.check(max_duplicates=prefetch, fleet=fleet)
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


EVENTS = 2000
EVENTS_BATCH = 25


@pytest.mark.timeout(600)
@pytest.mark.skipif(not FULL, reason="long form only (make cluster, make reliability)")
async def test_node_of_the_events_bridge_stopped_mid_backlog(
    names: Names,
    emulator: Emulator,
    record: Record,
    on_cluster: Cluster,
    processes: list[Process],
) -> None:
    """Cluster: the node the events bridge is connected to stopped mid-backlog of seller events."""
    cluster = on_cluster
    # The tap, a quorum queue bound to every key, declared through node 1 (it leads it) and
    # read through node 3; the bridge lists the nodes from node 2, as the worker does.
    reading = await connect_robust(Settings(amqp_url=cluster.url(first=WITNESS_NODE)), "check")
    try:
        channel = await reading.channel()
        declaring = await connect(Settings(amqp_url=cluster.url(first=PUBLISHER_NODE)), "check")
        async with declaring:
            declare = await declaring.channel()
            exchange = await declare.declare_exchange(
                names.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await declare.declare_queue(
                f"{names.queue}.all", durable=True, arguments={"x-queue-type": "quorum"}
            )
            await queue.bind(exchange, routing_key="#")
        tap = Tap(channel, queue.name)
        backlog = make_events(EVENTS, seed=33, prefix="c")
        emulator.add_events(backlog.items, backlog.files)
        emulator.configure(latency=0.005)
        env = bridge_env(
            names,
            emulator,
            AMQP_URL=cluster.url(first=WORKER_NODE),
            EVENTS_BATCH_SIZE=str(EVENTS_BATCH),
        )
        started = time.monotonic()
        bridge = await start_bridge(env, processes)
        ledger = emulator.events.ledger
        await wait_for(
            lambda: ledger.acked_total >= EVENTS // 5, timeout=120, what="a fifth acknowledged"
        )
        stopped = time.monotonic()
        stopping = asyncio.create_task(cluster.stop_node(WORKER_NODE))
        await wait_for(
            lambda: bridge.has_event("events.connection_lost") or stopping.done(),
            timeout=120,
            what="the bridge to lose its connection",
        )
        at_loss, lost_at = ledger.acked_total, time.monotonic()
        await stopping
        record.figures.update(
            node_stopped=WORKER_NODE, stop_took_s=seconds(time.monotonic() - stopped)
        )
        # Resumed: more acknowledged than the batch that was in hand at the loss.
        await wait_for(
            lambda: ledger.acked_total > at_loss + EVENTS_BATCH,
            timeout=120,
            what="acknowledging to resume after the node stopped",
        )
        resumed = time.monotonic() - lost_at
        await wait_for(
            lambda: emulator.events.pending == 0, timeout=300, what="every event acknowledged"
        )
        duration = time.monotonic() - started
        # Every event SCX acknowledged is held by the cluster: the tap has every message.
        await tap.until_all(set(backlog.expected), timeout=120)
        duplicates = check_published(tap, backlog, exactly_once=False)
        record.figures.update(
            published=EVENTS,
            messages=len(backlog.expected),
            acked_at_loss=at_loss,
            recovery_s=seconds(resumed),
            lost=0,
            duplicated=duplicates,
            redelivered_events=ledger.redelivered,
            acked_again=ledger.acked_again,
            duration_s=round(duration, 1),
            connections_lost=sum(b"events.connection_lost" in line for line in bridge.lines),
        )
        record.bounds = {
            "lost": "= 0 (every acknowledged event in the cluster, every event acknowledged)",
            "duplicates": "only byte-identical copies with the same message_id",
            "resumed": f"≤ {RESUME_WITHIN_S:g} s after the loss, in the same process",
        }
        assert bridge.process.returncode is None, bridge.output[-3000:]
        assert resumed <= RESUME_WITHIN_S, f"acknowledging resumed {resumed:.1f} s after the loss"
    finally:
        await reading.close()
