"""One soak run: every part started on loopback, seeded traffic and faults, the books closed.

``Soak(config).run()`` starts, in order: the 3-node cluster (``scripts/cluster.sh``, stopped
again at the end if this run started it), the emulator in this process (short tokens, a rate
limit, random 503s on every channel route and bursts of them on tickets, uploads and
downloads), the file server of the attachment URLs, a Redis of its own for the progress
record, a TCP proxy in front of node 2, the tap, two workers (``scx-forwarder run``, outcome
events on; worker 1 reaches the cluster through the proxy first) and two bridges
(``scx-forwarder events``: one polls, one stands by). Then for ``minutes`` it publishes
conversations and invalid events, injects seller events, and carries out the fault plan
(``tests.soak.faults``), sampling throughput every second. When the traffic and the last
fault are over it waits for every message to settle, stops every process with SIGTERM, and
reconciles (``tests.soak.ledger.reconcile``). Everything it started is stopped whatever
happens; the broker objects it declared are deleted.

The emulator runs as SCX counts (``EmulatorKnobs``): one window per route category (raised
from JTL's production limits so the load is not starved), SCX's 10-delivery cap on seller
events (the run fails on any event SCX gave up) and its page cap of 100.

**Every wait is bounded and logged.** Each step that waits on something outside this process
(a node stop, a broker call, a process exit, the settling) goes through ``bounded``, which
gives it a deadline, logs ``soak.waiting`` when it starts to take long and
``soak.wait_exceeded`` (with what it was waiting for) when the deadline passes. The first
version hung for about 10 minutes after the queues were empty: the settling waited its whole
timeout for things that would never come, and teardown steps (closing a robust connection
whose node had been stopped, ``rabbitmqctl`` calls) had no deadline at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import random
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import structlog
from pydantic import SecretStr
from yarl import URL

from tests.reliability.cluster import SCRIPT, Cluster, node_name
from tests.reliability.harness import DeadLetters, Endpoint, delete_broker_objects, leftovers
from tests.soak import faults
from tests.soak.ledger import (
    Books,
    Ledger,
    Losses,
    accepted_since,
    invalid_classes,
    read_scx,
    reconcile,
)
from tests.soak.parts import (
    BurstyFileServer,
    Child,
    OwnRedis,
    Tap,
    environment_without_ours,
    publish,
)
from tests.soak.traffic import Message, Traffic
from tests.support.broker import Names
from tests.support.endpoints import REFRESH_TOKEN
from tests.support.proxy import TcpProxy
from worker.core.settings import Settings
from worker.emulator import Emulator, EmulatorConfig
from worker.emulator.app import Route

log = structlog.get_logger(__name__)

PREFETCH, CONCURRENCY, ATTACHMENT_CONCURRENCY = 64, 32, 4
EVENTS_BATCH = 100
GRACE = 10.0
# Settling gives up when what is missing has not changed for this long: every retry of the
# workers (delays up to 4 s, breaker cooldown 1 s) and of the bridge (visibility timeout,
# EVENTS_DELIVERY_TRIES deliveries) comes round well within it.
STALL = 120.0
# A SIGTERMed process gets its grace to drain, then this long to close its connections.
EXIT_MARGIN = 5.0
WORKERS, BRIDGES = ("worker-1", "worker-2"), ("bridge-1", "bridge-2")
# Each process lists every node, from a different one; worker 1 and bridge 1 reach node 2
# through the proxy (the "connection cut" fault).
FIRST_NODE = {"worker-1": 2, "worker-2": 3, "bridge-1": 2, "bridge-2": 3}
# Time is scaled down with settings (as tests/reliability does): delays of 1, 2, 4 s.
FAST = {
    "WORKER_RETRY_DELAYS": "1,2,4",
    "SCX_BREAKER_COOLDOWN": "1",
    "SCX_RETRY_INITIAL_WAIT": "0.05",
    "SCX_RETRY_MAX_WAIT": "1",
    "WORKER_SHUTDOWN_GRACE": f"{GRACE:g}",
}


@dataclass
class EmulatorKnobs:
    """What the soak sets on the emulator, in one place."""

    token_lifetime: float = 5.0  # tokens expire every few seconds under load
    # One window per route category (worker.emulator.limits), per rate_interval; raised from
    # JTL's per-minute limits (channel 60, event 240, default 10) so the load is not starved.
    channel_limit: int = 100  # tickets, uploads, downloads
    event_limit: int = 40  # GET/DELETE /v1/channel/event
    default_limit: int = 20  # /v1/auth among others
    rate_interval: float = 1.0
    fail_rate: float = 0.01  # random 503s on every channel route
    # SCX's visibility timeout is 5 minutes; shortened so a seller event caught by a crash
    # (or left unacknowledged because a file kept failing) comes again within the run.
    event_visibility: float = 20.0
    event_max_deliveries: int = 10  # as SCX: given up after the 10th delivery
    event_page_cap: int = 100  # as JTL's schema


def configure_emulator(emulator: Emulator, knobs: EmulatorKnobs) -> None:
    emulator.configure(
        token_lifetime=knobs.token_lifetime,
        category_limits=True,
        rate_algorithm="sliding",
        fail_rate=knobs.fail_rate,
        fail_status=503,
        event_visibility=knobs.event_visibility,
        event_max_deliveries=knobs.event_max_deliveries,
        event_page_cap=knobs.event_page_cap,
    )
    restore_rate_limit(emulator, knobs)


def restore_rate_limit(emulator: Emulator, knobs: EmulatorKnobs) -> None:
    emulator.configure(
        rate_limit=knobs.channel_limit,
        event_rate_limit=knobs.event_limit,
        default_rate_limit=knobs.default_limit,
        rate_interval=knobs.rate_interval,
    )


T = TypeVar("T")


async def bounded(
    what: str,
    awaitable: Awaitable[T],
    timeout: float,
    clock: Callable[[], float],
    patience: float | None = None,
) -> T:
    """Await ``awaitable`` for at most ``timeout`` seconds, saying so when it takes long.

    Logs ``soak.waiting`` after ``patience`` seconds (default: a quarter of the timeout, at
    least 10 s) and ``soak.wait_exceeded`` when the timeout passes, then raises
    ``TimeoutError``.
    """
    task = asyncio.ensure_future(awaitable)
    started = clock()
    patience = max(10.0, timeout / 4) if patience is None else patience
    done, _ = await asyncio.wait({task}, timeout=min(patience, timeout))
    if not done and timeout > patience:
        log.warning("soak.waiting", what=what, at=round(clock(), 1), waited=round(patience, 1))
        done, _ = await asyncio.wait({task}, timeout=timeout - patience)
    if not done:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        log.error("soak.wait_exceeded", what=what, at=round(clock(), 1), since=round(started, 1))
        raise TimeoutError(f"{what}: no end within {timeout:g} s")
    return task.result()


@dataclass(frozen=True)
class SoakConfig:
    seed: int = 1
    minutes: float = 3.0
    rate: float = 10.0  # ticket messages published per second
    seller_rate: float = 3.0  # seller events injected per second
    classes: tuple[str, ...] = faults.CLASSES
    per_hour: float = 6.0  # faults of each class per hour (at least one each)
    settle_timeout: float = 300.0
    out_dir: Path = Path("build/soak")
    # The longest a fault lasts, whatever its class draws (None: faults.HOLD as drawn); the
    # short form caps holds so that two node stops fit into its few minutes.
    hold_cap: float | None = None
    knobs: EmulatorKnobs = field(default_factory=EmulatorKnobs)


@dataclass
class Sample:
    at: float
    forwarded: int  # distinct messages in SCX so far
    seller_messages: int  # seller-event messages on the tap so far
    dead: int  # DLQ copies so far


@dataclass
class Result:
    config: SoakConfig
    books: Books
    faults: list[faults.Done]
    fault_errors: list[str]
    timeline: list[Sample]
    traffic_s: float
    settle_s: float
    settled: bool
    longest_wait: tuple[str | None, float]
    invalid_classes: dict[str, int]
    exits: list[dict[str, Any]]
    api: dict[str, Any]
    machine: str
    started: str
    not_json: list[str]
    log_dir: Path

    @property
    def passed(self) -> bool:
        return self.books.ok and self.settled and not self.fault_errors


class Soak:
    def __init__(self, config: SoakConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        suffix = uuid.uuid4().hex[:10]
        self.names = Names(exchange=f"soak.marketplace.{suffix}", queue=f"soak.scx.{suffix}")
        self.run_dir = config.out_dir.resolve() / f"seed{config.seed}-{suffix}"
        self.log_dir = self.run_dir / "logs"
        self.ledger = Ledger()
        self.timeline: list[Sample] = []
        self.children: dict[str, Child] = {}
        self.emulator = Emulator(EmulatorConfig(refresh_token=REFRESH_TOKEN))
        self.files = BurstyFileServer()
        self.redis = OwnRedis(self.run_dir / "redis")
        self.cluster = Cluster(())
        self.proxy: TcpProxy | None = None
        self.tap: Tap | None = None
        self.dead: DeadLetters | None = None
        self._epoch = time.monotonic()
        self._started_cluster = False
        self._traffic_over = False
        self._restarting: set[str] = set()

    def clock(self) -> float:
        return time.monotonic() - self._epoch

    # --- the run -------------------------------------------------------------------------

    async def run(self) -> Result:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            return await self._run()
        finally:
            await self._teardown()

    async def _run(self) -> Result:
        config = self.config
        await self._start_parts()
        seconds = config.minutes * 60
        plan = faults.schedule(self.rng, seconds, config.classes, config.per_hour)
        if config.hold_cap is not None:
            plan = [faults.Planned(p.at, p.fault, min(p.hold, config.hold_cap)) for p in plan]
        injector = faults.Injector(self._actions(), self.clock)
        self._epoch = time.monotonic()
        background = [
            asyncio.create_task(self._sample()),
            asyncio.create_task(self._drain_dlq()),
            asyncio.create_task(self._watch_children()),
        ]
        traffic = [
            asyncio.create_task(self._publish(seconds)),
            asyncio.create_task(self._inject_seller_events(seconds)),
            asyncio.create_task(self._route_bursts(seconds)),
        ]
        try:
            # Traffic ends on time; a fault is bounded by its hold plus the slowest of its
            # steps (a node started again), so the whole plan has a deadline too.
            await self._bounded(
                "traffic and faults",
                asyncio.gather(injector.run(plan), *traffic),
                seconds + 600,
                patience=seconds + 60,
            )
            self._traffic_over = True
            traffic_s = self.clock()
            log.info("soak.traffic_over", at=round(traffic_s, 1))
            settled = await self._settle()
            settle_s = self.clock() - traffic_s
            await asyncio.sleep(3.0)  # sync-ok: a quiet period, so a late duplicate can show up
            await self._sample_once()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        log.info("soak.stopping", at=round(self.clock(), 1))
        await self._stop_children()
        return await self._close_books(injector, traffic_s, settle_s, settled)

    async def _start_parts(self) -> None:
        await self._start_cluster()
        await self.emulator.start()
        configure_emulator(self.emulator, self.config.knobs)
        await self.files.start()
        await self.redis.start()
        node2 = URL(self.cluster.urls[1])
        self.proxy = await TcpProxy(node2.host or "127.0.0.1", node2.port or 5682).start()
        witness = self.cluster.url(first=3)
        self.tap = Tap(self._settings(witness), f"{self.names.queue}.tap")
        await self.tap.start()
        self.dead = DeadLetters(self.names.dlq, Endpoint(witness, node_name(3)))
        secrets = (REFRESH_TOKEN.encode(), b":guest@")
        for role in (*WORKERS, *BRIDGES):
            command = "run" if role in WORKERS else "events"
            self.children[role] = Child(
                role, command, self._env(role), self.log_dir, self.clock, secrets
            )
        # The workers first (they declare the topology), then both bridges at once.
        await asyncio.gather(
            *(self.children[r].start(ready=("worker.consuming",)) for r in WORKERS)
        )
        await asyncio.gather(
            *(
                self.children[r].start(ready=("events.poller_active", "events.standby"))
                for r in BRIDGES
            )
        )
        log.info("soak.parts_started", at=round(self.clock(), 1))

    def _bounded(
        self, what: str, awaitable: Awaitable[T], timeout: float, patience: float | None = None
    ) -> Awaitable[T]:
        return bounded(what, awaitable, timeout, self.clock, patience)

    async def _start_cluster(self) -> None:
        status = await _run(str(SCRIPT), "status")
        self._started_cluster = status.count(" running on ") < 3
        log.info("soak.cluster", running=not self._started_cluster)
        await _run(str(SCRIPT), "start", timeout=300)
        urls = (await _run(str(SCRIPT), "urls")).strip().split(",")
        self.cluster = Cluster(tuple(urls))

    def _settings(self, url: str) -> Settings:
        return Settings(
            amqp_url=SecretStr(url),
            amqp_exchange=self.names.exchange,
            amqp_queue=self.names.queue,
            worker_retry_delays=(1.0, 2.0, 4.0),
        )

    def _amqp_url(self, role: str) -> str:
        assert self.proxy is not None
        first = FIRST_NODE[role]
        order = [first, *(n for n in (1, 2, 3) if n != first)]
        urls = [self.cluster.urls[n - 1] for n in order]
        if role in ("worker-1", "bridge-1"):
            urls[0] = self.proxy.url
        return ",".join(urls)

    def _env(self, role: str) -> dict[str, str]:
        names = self.names
        env = environment_without_ours() | FAST
        env.update(
            METRICS_PORT="0",
            LOG_FORMAT="json",
            AMQP_URL=self._amqp_url(role),
            AMQP_EXCHANGE=names.exchange,
            AMQP_QUEUE=names.queue,
            AMQP_PREFETCH=str(PREFETCH),
            WORKER_CONCURRENCY=str(CONCURRENCY),
            WORKER_ATTACHMENT_CONCURRENCY=str(ATTACHMENT_CONCURRENCY),
            SCX_API_URL=self.emulator.base_url,
            SCX_REFRESH_TOKEN=REFRESH_TOKEN,
            # The emulator's limit is the one that counts; the workers do not pace themselves.
            SCX_MAX_REQUESTS_PER_MINUTE="0",
            WORKER_STATE_REDIS_URL=self.redis.url,
            WORKER_STATE_KEY_PREFIX=f"soak-{names.queue}",
            WORKER_OUTCOME_EVENTS="true",
            ATTACHMENT_ALLOWED_URLS=self.files.base + "/",
            EVENTS_UNROUTED_QUEUE=f"{names.queue}.unrouted",
            EVENTS_LOCK_NAME=f"{names.queue}.lock",
            EVENTS_POLL_INTERVAL="0.5",
            EVENTS_BATCH_SIZE=str(EVENTS_BATCH),
        )
        return env

    # --- traffic -------------------------------------------------------------------------

    async def _publish(self, seconds: float) -> None:
        traffic = Traffic(random.Random(self.rng.random()), self.files.put_file)
        settings = self._settings(self.cluster.url(first=3))
        tick = 0.5
        while self.clock() < seconds:
            items = traffic.next_items(max(1, round(self.config.rate * tick)))
            batch = [
                (item.event_id if isinstance(item, Message) else item.message_id, item.body)
                for item in items
            ]
            while True:
                for item in items:
                    self.ledger.published(item, self.clock())
                try:
                    await asyncio.wait_for(publish(settings, batch), 30)
                    break
                except Exception as exc:  # the node is down or its leader moving: again
                    log.warning("soak.publish_failed", error=f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(1.0)  # sync-ok: a retry's pause, not a wait for a state
            await asyncio.sleep(tick)

    async def _inject_seller_events(self, seconds: float) -> None:
        traffic = Traffic(random.Random(self.rng.random()), self.files.put_file)
        tick = 1.0
        while self.clock() < seconds:
            events = traffic.seller_events(max(1, round(self.config.seller_rate * tick)))
            for event in events:
                self.ledger.injected(event)
            self.emulator.add_events([e.item for e in events], [f for e in events for f in e.files])
            await asyncio.sleep(tick)

    async def _route_bursts(self, seconds: float) -> None:
        """Bursts of injected 503s on tickets, uploads and downloads, every few seconds.

        Bursts are small (1-8 answers) because they are counted, not timed: a burst of 10-40
        on downloads (tried once, to make reply files fail for longer) outlived the traffic,
        since only the bridge downloads and its breaker let one probe through per cooldown
        (up to 60 s), each probe meeting another leftover 503. A reply whose file meets a
        burst beyond the bridge's retries is left unacknowledged and comes again after the
        visibility timeout (``reply_file_failures`` counts those deliveries).
        """
        rng = random.Random(self.rng.random())
        async with httpx.AsyncClient(base_url=self.emulator.base_url) as client:
            while self.clock() < seconds:
                await asyncio.sleep(rng.uniform(3, 10))
                route: Route = rng.choice(("ticket", "upload", "download"))
                count = rng.randint(1, 8)
                state = (await client.get("/_emulator/state", params={"bodies": "0"})).json()
                if not state["pending_faults"][route]:
                    self.emulator.inject(route, 503, count=count)

    # --- watching ------------------------------------------------------------------------

    async def _sample_once(self) -> None:
        event_ids, self._accepted_index = accepted_since(self.emulator, self._accepted_index)
        self.ledger.seen_accepted(event_ids, self.clock())
        assert self.tap is not None
        assert self.dead is not None
        seller = sum(1 for c in self.tap.copies if c.outcome_of is None)
        self.timeline.append(
            Sample(self.clock(), len(self.ledger.accepted_at), seller, len(self.dead.copies))
        )

    _accepted_index = 0

    async def _sample(self) -> None:
        while True:
            await self._sample_once()
            await asyncio.sleep(1.0)  # sync-ok: the sampling period of the chart

    async def _drain_dlq(self) -> None:
        while True:
            await self._drain(every=0.5)
            await asyncio.sleep(0.5)

    async def _drain(self, every: float) -> None:
        """Take the DLQ's copies; a drain stuck on a connection that a node stop left half
        open is abandoned (the next one reconnects)."""
        assert self.dead is not None
        try:
            await asyncio.wait_for(self.dead.drain(every=every), 15)
        except TimeoutError:
            log.warning("soak.dlq_drain_stuck")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.dead.close(), 5)
            self.dead._connection = None

    async def _watch_children(self) -> None:
        """A process that exited without being asked is restarted (and counted against the run)."""
        while True:
            await asyncio.sleep(1.0)  # sync-ok: how often the children are looked at
            for role, child in self.children.items():
                if child.alive or role in self._restarting or child.asked is not None:
                    continue
                log.error("soak.exited_on_its_own", role=role)
                await self._restart(role)

    # --- the faults ----------------------------------------------------------------------

    def _actions(self) -> dict[str, faults.Action]:
        return {
            "worker_kill9": self._worker_kill9,
            "worker_sigterm": self._worker_sigterm,
            "bridge_kill9": self._bridge_kill9,
            "api_outage": self._api_outage,
            "rate_storm": self._rate_storm,
            "redis_restart": self._redis_restart,
            "file_burst": self._file_burst,
            "worker_node": self._worker_node,
            "leader_node": self._leader_node,
            "proxy_cut": self._proxy_cut,
        }

    async def _restart(self, role: str) -> None:
        self._restarting.add(role)
        try:
            child = self.children[role]
            ready = (
                ("worker.consuming",)
                if role in WORKERS
                else ("events.poller_active", "events.standby")
            )
            await child.start(ready=ready, timeout=180)
        finally:
            self._restarting.discard(role)

    def _pick_worker(self) -> str:
        alive = [r for r in WORKERS if self.children[r].alive and r not in self._restarting]
        return self.rng.choice(alive or list(WORKERS))

    async def _worker_kill9(self, hold: float) -> str:
        role = self._pick_worker()
        self._restarting.add(role)
        self.children[role].kill()
        await self.children[role].wait(30)
        await asyncio.sleep(hold)
        await self._restart(role)
        return role

    async def _worker_sigterm(self, hold: float) -> str:
        role = self._pick_worker()
        self._restarting.add(role)
        child = self.children[role]
        child.terminate()
        if not await child.wait(GRACE + EXIT_MARGIN):
            child.kill()
            await child.wait(30)
        exit_ = child.exits[-1]
        await asyncio.sleep(hold)
        await self._restart(role)
        return f"{role} exited {exit_.code} after {exit_.took or 0:.1f} s"

    async def _bridge_kill9(self, hold: float) -> str:
        active = [r for r in BRIDGES if self.children[r].alive and self.children[r].active_since]
        role = active[0] if active else self.rng.choice(BRIDGES)
        self._restarting.add(role)
        self.children[role].kill()
        await self.children[role].wait(30)
        await asyncio.sleep(hold)
        await self._restart(role)
        return role + ("" if active else " (no bridge was active)")

    async def _api_outage(self, hold: float) -> str:
        self.emulator.configure(outage=True)
        await asyncio.sleep(hold)
        self.emulator.configure(outage=False)
        return f"{hold:.1f} s"

    async def _rate_storm(self, hold: float) -> str:
        self.emulator.configure(
            rate_limit=1, event_rate_limit=1, default_rate_limit=1, rate_interval=2.0
        )
        await asyncio.sleep(hold)
        restore_rate_limit(self.emulator, self.config.knobs)
        return f"{hold:.1f} s"

    async def _redis_restart(self, hold: float) -> str:
        await self.redis.stop()
        await asyncio.sleep(hold)
        await self.redis.start()
        return f"down {hold:.1f} s"

    async def _file_burst(self, hold: float) -> str:
        self.files.burst = True
        before = self.files.burst_answers
        await asyncio.sleep(hold)
        self.files.burst = False
        return f"{self.files.burst_answers - before} answers 503"

    def _node_of_port(self, port: int | None) -> int | None:
        if port is None:
            return None
        if self.proxy is not None and port == self.proxy.port:
            return 2
        ports = [URL(u).port for u in self.cluster.urls]
        return ports.index(port) + 1 if port in ports else None

    async def _node_down(self, node: int, hold: float) -> None:
        try:
            await _run(str(SCRIPT), "stop-node", str(node), timeout=120)
            await asyncio.sleep(hold)
        finally:
            await _run(str(SCRIPT), "start-node", str(node), timeout=240)

    async def _worker_node(self, hold: float) -> str:
        role = self._pick_worker()
        node = self._node_of_port(self.children[role].node_port) or FIRST_NODE[role]
        await self._node_down(node, hold)
        return f"node {node} of {role}"

    async def _leader_node(self, hold: float) -> str:
        node = await self._bounded(
            "the queue's leader", self.cluster.leader(self.names.queue, ask=1), 60
        )
        await self._node_down(node, hold)
        return f"node {node}"

    async def _proxy_cut(self, hold: float) -> str:
        assert self.proxy is not None
        await self.proxy.cut()
        await asyncio.sleep(hold)
        await self.proxy.restore()
        return f"{hold:.1f} s"

    # --- the end -------------------------------------------------------------------------

    def _missing(self) -> dict[str, int]:
        """What has not arrived yet, by kind (empty: everything settled)."""
        ledger, tap, dead = self.ledger, self.tap, self.dead
        assert tap is not None
        assert dead is not None
        seen = {c.message_id for c in tap.copies if c.outcome_of is None}
        # A reply's file the bridge gave up on is marked unavailable in the reply: it will
        # never come as a message of its own (ledger._seller_events counts it).
        seen |= {f"{c.message_id}/{name}" for c in tap.copies for name in c.unavailable}
        outcomes = {c.outcome_of for c in tap.copies if c.outcome_of is not None}
        expected = {m for e in ledger.seller_events.values() for m in e.expected}
        missing = {
            "messages": len(ledger.messages.keys() - ledger.accepted_at.keys()),
            "dead letters": len(ledger.invalid.keys() - {c.message_id for c in dead.copies}),
            "seller events": self.emulator.events.pending,
            "seller messages": len(expected - seen),
            "outcomes": len((ledger.messages.keys() | ledger.invalid.keys()) - outcomes),
        }
        return {what: n for what, n in missing.items() if n}

    async def _settle(self) -> bool:
        """Wait until nothing is missing, or nothing has arrived for ``STALL`` seconds while
        the books say something is missing (it will not come: the run fails at once rather
        than waiting out ``settle_timeout``), or the timeout."""
        deadline = time.monotonic() + self.config.settle_timeout
        said = progressed = 0.0
        last: dict[str, int] = {}
        while time.monotonic() < deadline:
            await self._sample_once()
            await self._drain(every=0)
            missing = self._missing()
            if not missing:
                log.info("soak.settled", at=round(self.clock(), 1))
                return True
            if missing != last:
                last, progressed = missing, time.monotonic()
            elif time.monotonic() - progressed > STALL:
                log.error("soak.stalled", missing=missing, at=round(self.clock(), 1))
                return False
            if time.monotonic() - said > 10:
                log.info("soak.settling", missing=missing, at=round(self.clock(), 1))
                said = time.monotonic()
            await asyncio.sleep(1.0)  # sync-ok: the poll interval of a loop with a deadline
        log.error("soak.settle_timeout", missing=last, at=round(self.clock(), 1))
        return False

    async def _stop_children(self) -> None:
        await asyncio.gather(*(child.stop(GRACE + EXIT_MARGIN) for child in self.children.values()))
        log.info("soak.stopped", at=round(self.clock(), 1))

    async def _close_books(
        self, injector: faults.Injector, traffic_s: float, settle_s: float, settled: bool
    ) -> Result:
        assert self.dead is not None
        assert self.tap is not None
        await self._drain(every=0)
        scx = read_scx(self.emulator, self.ledger)
        witness = Endpoint(self.cluster.url(first=3), node_name(3))
        try:
            left = await self._bounded("counting leftovers", leftovers(self.names, witness), 60)
        except TimeoutError:
            left = {"leftovers (not counted: the broker did not answer)": 1}
        exits = [e for child in self.children.values() for e in child.exits]
        problems = []
        for e in exits:
            if e.asked is None:
                problems.append(f"{e.role} exited {e.code} on its own at {e.at:.1f} s")
            elif e.asked == "SIGTERM" and (e.code != 0 or (e.took or 0) > GRACE + EXIT_MARGIN):
                problems.append(f"{e.role} exited {e.code} {e.took or 0:.1f} s after SIGTERM")
        issued = {t.encode() for t in self.emulator.issued_tokens}
        leaks = [line for child in self.children.values() for line in child.leaks]
        for child in self.children.values():
            for token in child.token_like & issued:
                leaks.append(f"{child.role}: access token {token[:6]!r}...")
        kills = {role: 0 for role in self.children}
        for done in injector.done:
            if done.fault in ("worker_kill9", "bridge_kill9"):
                kills[done.detail.split()[0]] += 1
        worker_losses = sum(
            kills[r] + self.children[r].events["broker.disconnected"] for r in WORKERS
        )
        bridge_losses = sum(
            kills[r] + self.children[r].events["events.connection_lost"] for r in BRIDGES
        )
        books = reconcile(
            self.ledger,
            scx,
            self.dead.copies,
            self.tap.copies,
            Losses(worker_losses, bridge_losses, PREFETCH, ATTACHMENT_CONCURRENCY, EVENTS_BATCH),
            process_problems=problems,
            secrets_found=leaks,
            leftovers=left,
        )
        state = self.emulator.state
        events = self.emulator.events.ledger
        api = {
            "route_statuses": dict(state.route_statuses),
            "auth_calls": state.auth_calls,
            "unauthorized": state.unauthorized,
            "outages": len(state.outages),
            "events_redelivered": events.redelivered,
            "events_given_up": events.given_up,
            # Deliveries of a reply left unacknowledged because a file kept failing.
            "reply_file_failures": sum(
                self.children[r].events["events.attachment_failed"] for r in BRIDGES
            ),
            "worker_losses": worker_losses,
            "bridge_losses": bridge_losses,
        }
        return Result(
            config=self.config,
            books=books,
            faults=injector.done,
            fault_errors=injector.failed,
            timeline=self.timeline,
            traffic_s=traffic_s,
            settle_s=settle_s,
            settled=settled,
            longest_wait=self.ledger.longest_wait(),
            invalid_classes=invalid_classes(self.ledger),
            exits=[asdict(e) for e in exits],
            api=api,
            machine=_machine(),
            started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            not_json=[line for child in self.children.values() for line in child.not_json][:20],
            log_dir=self.log_dir,
        )

    async def _teardown(self) -> None:
        """Stop everything this run started, whatever state it is in."""
        for child in self.children.values():
            child.kill()
        await asyncio.gather(
            *(child.wait(30) for child in self.children.values()), return_exceptions=True
        )
        steps: list[Callable[[], Awaitable[object]]] = []
        if self.tap is not None:
            steps.append(self.tap.close)
        if self.dead is not None:
            steps.append(self.dead.close)
        if self.proxy is not None:
            steps.append(self.proxy.close)
        steps += [self.files.stop, self.redis.stop, self.emulator.stop]
        if self.cluster.urls:
            steps.append(self._forget_broker_objects)
            if self._started_cluster:
                steps.append(lambda: _run(str(SCRIPT), "stop", timeout=300))
        for step in steps:
            name = getattr(step, "__qualname__", repr(step))
            try:
                await self._bounded(f"teardown: {name}", step(), 330)
            except Exception as exc:  # teardown goes on; what failed is in the log
                log.warning("soak.teardown_step_failed", step=name, error=repr(exc))
        log.info("soak.torn_down", at=round(self.clock(), 1))

    async def _forget_broker_objects(self) -> None:
        await _run(str(SCRIPT), "start", timeout=300)  # a fault may have left a node down
        witness = Endpoint(self.cluster.url(first=3), node_name(3))
        await delete_broker_objects(self.names, witness)


async def _run(*command: str, timeout: float = 120) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    text = out.decode(errors="replace")
    if process.returncode != 0 and command[-1] != "status":
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}: {text[-2000:]}")
    return text


def _machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        version = subprocess.run(
            ["rabbitmqctl", "-q", "-n", node_name(3), "version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        version = "unknown"
    import os

    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {cpu}; Python "
        f"{platform.python_version()}; RabbitMQ {version or 'unknown'}"
    )
