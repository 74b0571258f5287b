"""The seeded fault schedule and the hands that carry it out.

``schedule(rng, seconds, classes, per_hour)`` draws, for each fault class, its start times
(uniform over the fault window, at least one of each class) and how long each lasts; faults
of different classes overlap freely. The cluster faults (the worker's node stopped, the
queue's leader stopped) take turns on one lock: a quorum queue of three needs two members,
so one node is down at a time, and a fault that waits for the lock is logged when it lands.

===================  ======================================================================
class                what happens
===================  ======================================================================
``worker_kill9``     SIGKILL a worker; start it again after ``hold`` seconds
``worker_sigterm``   SIGTERM a worker (it must exit 0 within its grace); start it again
``bridge_kill9``     SIGKILL the bridge that holds the poller lock; start it again (standby)
``api_outage``       every API call answered 503 for ``hold`` seconds
``rate_storm``       the emulator's limit cut to 1 call per 2 s: 429s for ``hold`` seconds
``redis_restart``    the soak's Redis stopped (SIGTERM) for ``hold`` seconds, started again
``file_burst``       the file server answers 503 for ``hold`` seconds
``worker_node``      the cluster node a worker is connected to stopped, started after ``hold``
``leader_node``      the node leading the work queue stopped, started after ``hold``
``proxy_cut``        the TCP proxy in front of worker 1's first node cut, restored after ``hold``
===================  ======================================================================
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

# (seconds it lasts: low, high) per class.
HOLD: dict[str, tuple[float, float]] = {
    "worker_kill9": (0.5, 3.0),
    "worker_sigterm": (0.5, 3.0),
    "bridge_kill9": (0.5, 3.0),
    "api_outage": (3.0, 15.0),
    "rate_storm": (5.0, 15.0),
    "redis_restart": (1.0, 6.0),
    "file_burst": (3.0, 20.0),
    "worker_node": (5.0, 20.0),
    "leader_node": (5.0, 20.0),
    "proxy_cut": (1.0, 8.0),
}
CLASSES = tuple(HOLD)
CLUSTER_CLASSES = frozenset({"worker_node", "leader_node"})


@dataclass(frozen=True)
class Planned:
    at: float  # seconds after the traffic started
    fault: str
    hold: float


@dataclass
class Done:
    fault: str
    planned_at: float
    started_at: float
    ended_at: float
    detail: str


def schedule(
    rng: random.Random, seconds: float, classes: tuple[str, ...], per_hour: float
) -> list[Planned]:
    """The faults of a run of ``seconds``: ``per_hour`` of each class (at least one)."""
    window = (0.05 * seconds, 0.85 * seconds)
    plan = []
    for fault in classes:
        count = max(1, round(per_hour * seconds / 3600))
        low, high = HOLD[fault]
        for _ in range(count):
            plan.append(Planned(rng.uniform(*window), fault, rng.uniform(low, high)))
    return sorted(plan, key=lambda p: p.at)


# A fault's hands: given its hold, it does the fault and returns a line saying what it did.
Action = Callable[[float], Awaitable[str]]


class Injector:
    """Carries out a plan against the run's parts, logging each fault with its times."""

    def __init__(self, actions: dict[str, Action], clock: Callable[[], float]) -> None:
        self.actions = actions
        self.clock = clock
        self.done: list[Done] = []
        self.failed: list[str] = []
        self._cluster = asyncio.Lock()

    async def run(self, plan: list[Planned]) -> None:
        tasks = [asyncio.create_task(self._one(planned)) for planned in plan]
        await asyncio.gather(*tasks)

    async def _one(self, planned: Planned) -> None:
        await asyncio.sleep(max(0.0, planned.at - self.clock()))
        if planned.fault in CLUSTER_CLASSES:
            async with self._cluster:
                await self._do(planned)
        else:
            await self._do(planned)

    async def _do(self, planned: Planned) -> None:
        started = self.clock()
        log.info("soak.fault", fault=planned.fault, at=round(started, 1), hold=planned.hold)
        try:
            detail = await self.actions[planned.fault](planned.hold)
        except Exception as exc:  # a fault the soak could not inject is a failed run
            self.failed.append(f"{planned.fault} at {started:.1f} s: {type(exc).__name__}: {exc}")
            log.exception("soak.fault_failed", fault=planned.fault)
            detail = f"failed: {exc}"
        ended = self.clock()
        self.done.append(Done(planned.fault, planned.at, started, ended, detail))
        log.info("soak.fault_over", fault=planned.fault, at=round(ended, 1), detail=detail)
