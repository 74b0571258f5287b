"""Pacing against a rate limit: the project's emulator with ``X-RateLimit-*`` headers.

One emulator (``scx-forwarder emulator --rate-limit L --rate-interval I``, 429 +
``Retry-After`` past L calls), switched between its three ways of counting
(``rate_algorithm``: fixed windows, a sliding window, a token bucket; see
``worker/emulator/limits.py``) over ``POST /_emulator/config``, which also starts the count
afresh. Per cell of the grid: one queue with a backlog that outlasts the run, 1 or 3 worker
processes sharing the refresh token and the queue, each with ``SCX_MAX_REQUESTS_PER_MINUTE``
= the limit per minute (L * 60 / I), and with the bridge, one ``scx-forwarder events``
process polling on the same credential with the same setting. From the first
``/v1/channel*`` call on, the run lasts a whole number of intervals; the emulator's
``GET /_emulator/state`` at the end gives the calls, statuses and accepted tickets in that
time (the emulator is reset before the processes start). The workers are those of the
contender given: the current one, or with ``--baseline`` the worker of an earlier commit
(``bench/baseline.py``), whose cells the table marks.

Goodput = answered-with-2xx ``/v1/channel*`` calls (accepted tickets, and the bridge's
polls and acknowledgements) / (L per interval * intervals), the rate the limit sustains (a
token bucket also lets a full bucket's worth through at once, which the pacer does not
chase); 429 share = 429 answers / ``/v1/channel*`` calls.

Where ``scx-forwarder events`` does not exist in the contender's checkout
(``python -m worker events --help`` fails), the bridge cells are reported as not run, never
estimated.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

import httpx

from bench.contenders import Contender
from bench.measure import Session
from bench.target import free_port
from worker.ops.samples import sample_lines

ALGORITHMS = ("fixed", "sliding", "bucket")
BRIDGE_MISSING = "not run: events bridge not available"
BRIDGE_ARGV = (sys.executable, "-m", "worker", "events")


@dataclass
class PacingResult:
    worker: str  # Contender.version: current, or before (<short hash>)
    algorithm: str
    workers: int
    bridge: bool
    limit: int
    interval: float
    per_minute: float
    seconds: float
    calls: int  # every /v1/channel* call
    accepted: int  # of them, answered with a 2xx
    statuses: dict[str, int]  # "route status" -> calls, e.g. "ticket 201"
    dead_lettered: int
    error: str | None = None

    @property
    def ran(self) -> bool:
        return self.error is None or self.calls > 0

    @property
    def goodput_share(self) -> float:
        return self.accepted / (self.limit * self.seconds / self.interval)

    @property
    def limited(self) -> int:
        return sum(n for key, n in self.statuses.items() if key.endswith(" 429"))

    @property
    def share_429(self) -> float:
        return self.limited / self.calls if self.calls else 0.0


@cache
def bridge_available(contender: Contender) -> bool:
    """Whether the contender's checkout has ``scx-forwarder events`` (the events bridge)."""
    probe = subprocess.run(
        [*BRIDGE_ARGV, "--help"],
        env=os.environ | contender.checkout_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    return probe.returncode == 0


class Emulator:
    def __init__(
        self, session: Session, limit: int, interval: float, *, extra: tuple[str, ...] = ()
    ) -> None:
        """``extra``: more emulator flags (e.g. ``--category-limits``)."""
        self._session = session
        self.limit, self.interval = limit, interval
        self._extra = extra
        self.url = f"http://127.0.0.1:{free_port()}"
        self._proc: asyncio.subprocess.Process | None = None
        self.http = httpx.AsyncClient(base_url=self.url, timeout=10)

    async def start(self) -> None:
        port = self.url.rsplit(":", 1)[1]
        self._proc = await self._session.children.start(
            [sys.executable, "-m", "worker", "emulator", "--port", port,
             "--rate-limit", str(self.limit), "--rate-interval", f"{self.interval:g}",
             *self._extra],
            log=self._session.workdir / "emulator.log",
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                await self.state()
                return
            except httpx.TransportError:
                if time.monotonic() > deadline or self._proc.returncode is not None:
                    raise RuntimeError("the emulator did not start (see emulator.log)") from None
                await asyncio.sleep(0.1)

    async def state(self) -> dict[str, Any]:
        response = await self.http.get("/_emulator/state")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    async def reset(self) -> None:
        (await self.http.post("/_emulator/reset", json={})).raise_for_status()

    async def count_with(self, algorithm: str) -> None:
        """Count the limit this way from now on, afresh."""
        response = await self.http.post("/_emulator/config", json={"rate_algorithm": algorithm})
        response.raise_for_status()

    async def stop(self) -> None:
        await self.http.aclose()
        if self._proc is not None:
            await self._session.children.stop(self._proc)


async def pacing(
    session: Session,
    emulator: Emulator,
    contender: Contender,
    *,
    algorithm: str,
    workers: int,
    bridge: bool,
    seconds: float,
) -> PacingResult:
    limit, interval = emulator.limit, emulator.interval
    per_minute = limit * 60 / interval
    cell = (contender.version, algorithm, workers, bridge, limit, interval, per_minute, seconds)
    if bridge and not bridge_available(contender):
        return PacingResult(*cell, 0, 0, {}, 0, BRIDGE_MISSING)
    settings = await session.broker.new_queue()
    backlog = int(limit / interval * seconds * 1.5) + 100 * workers
    await session.broker.publish_backlog(settings, list(sample_lines(backlog)))
    await emulator.count_with(algorithm)
    await emulator.reset()
    # One window for every /v1/channel* route here (no --category-limits): the event
    # category's pace is that window's too (an older contender ignores the variable).
    pace = {
        "SCX_MAX_REQUESTS_PER_MINUTE": f"{per_minute:g}",
        "SCX_EVENT_REQUESTS_PER_MINUTE": f"{per_minute:g}",
    }
    procs = []
    name = f"pacing-{contender.key}-{algorithm}-{workers}{'-bridge' if bridge else ''}"
    for k in range(workers):
        env = contender.env(settings, emulator.url, **pace)
        log = session.workdir / f"{name}-{k}.log"
        procs.append(await session.children.start(contender.argv, env, log=log))
    if bridge:
        env = contender.env(settings, emulator.url, **pace)
        log = session.workdir / f"{name}-events.log"
        procs.append(await session.children.start(BRIDGE_ARGV, env, log=log))
    error = None
    first = last = None
    try:
        deadline = time.monotonic() + 60
        while sum((first := await emulator.state())["channel_calls"].values()) == 0:
            if time.monotonic() > deadline or any(p.returncode is not None for p in procs):
                error = "no /v1/channel* call within 60 s"
                break
            await asyncio.sleep(0.05)
        if error is None:
            # The emulator's first interval opened with that first call, just now.
            await asyncio.sleep(seconds - 0.1)
            last = await emulator.state()
    finally:
        await asyncio.gather(*(session.children.stop(p, grace=30) for p in procs))
        dead = (await session.broker.depth(settings.dead_letter_queue))[0]
        await session.broker.delete(settings)
    if first is None or last is None:
        return PacingResult(*cell, 0, 0, {}, dead, error)
    # Counted from the reset, that is from the first call, which opened the first interval.
    statuses = {key: n for key, n in last["route_statuses"].items() if n}
    calls = sum(statuses.values())
    accepted = sum(n for key, n in statuses.items() if key.split()[-1].startswith("2"))
    return PacingResult(*cell, calls, accepted, statuses, dead)
