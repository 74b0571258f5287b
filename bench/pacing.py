"""Pacing against a rate limit: the project's emulator with ``X-RateLimit-*`` headers.

One emulator (``scx-forwarder emulator --rate-limit L --rate-interval I``, a fixed window
that opens with the first call after the last one ran out, 429 + ``Retry-After`` past L
calls), one queue with a backlog that outlasts the run, and 1 or 3 worker processes sharing
the refresh token and the queue, each with ``SCX_MAX_REQUESTS_PER_MINUTE`` = the limit per
minute (L * 60 / I). From the first ticket call on, the run lasts a whole number of windows;
the emulator's ``GET /_emulator/state`` at the end gives the calls, statuses and accepted
tickets in that time (the emulator is reset before the workers start).

Goodput = accepted / (L per window * windows); 429 share = 429 answers / ticket calls.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx

from bench.contenders import WORKER
from bench.measure import Session
from bench.target import free_port
from worker.samples import sample_lines


@dataclass
class PacingResult:
    workers: int
    limit: int
    interval: float
    per_minute: float
    seconds: float
    calls: int
    accepted: int
    statuses: dict[str, int]
    dead_lettered: int
    error: str | None = None

    @property
    def goodput_share(self) -> float:
        return self.accepted / (self.limit * self.seconds / self.interval)

    @property
    def share_429(self) -> float:
        return self.statuses.get("429", 0) / self.calls if self.calls else 0.0


class Emulator:
    def __init__(self, session: Session, limit: int, interval: float) -> None:
        self._session = session
        self.limit, self.interval = limit, interval
        self.url = f"http://127.0.0.1:{free_port()}"
        self._proc: asyncio.subprocess.Process | None = None
        self.http = httpx.AsyncClient(base_url=self.url, timeout=10)

    async def start(self) -> None:
        port = self.url.rsplit(":", 1)[1]
        self._proc = await self._session.children.start(
            [sys.executable, "-m", "worker", "emulator", "--port", port,
             "--rate-limit", str(self.limit), "--rate-interval", f"{self.interval:g}"],
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

    async def stop(self) -> None:
        await self.http.aclose()
        if self._proc is not None:
            await self._session.children.stop(self._proc)


async def pacing(
    session: Session, emulator: Emulator, *, workers: int, seconds: float
) -> PacingResult:
    limit, interval = emulator.limit, emulator.interval
    per_minute = limit * 60 / interval
    settings = await session.broker.new_queue()
    backlog = int(limit / interval * seconds * 1.5) + 100 * workers
    await session.broker.publish_backlog(settings, list(sample_lines(backlog)))
    await emulator.reset()
    procs = []
    for k in range(workers):
        env = WORKER.env(settings, emulator.url, SCX_MAX_REQUESTS_PER_MINUTE=f"{per_minute:g}")
        log = session.workdir / f"pacing-{workers}-{k}.log"
        procs.append(await session.children.start(WORKER.argv, env, log=log))
    error = None
    first = last = None
    try:
        deadline = time.monotonic() + 60
        while (first := await emulator.state())["ticket_calls"] == 0:
            if time.monotonic() > deadline or any(p.returncode is not None for p in procs):
                error = "no ticket call within 60 s"
                break
            await asyncio.sleep(0.05)
        if error is None:
            # The emulator's first window opened with that first call, just now.
            await asyncio.sleep(seconds - 0.1)
            last = await emulator.state()
    finally:
        await asyncio.gather(*(session.children.stop(p, grace=30) for p in procs))
        dead = (await session.broker.depth(settings.dead_letter_queue))[0]
        await session.broker.delete(settings)
    if first is None or last is None:
        return PacingResult(workers, limit, interval, per_minute, seconds, 0, 0, {}, dead, error)
    # Counted from the reset, that is from the first call, which opened the first window.
    return PacingResult(
        workers,
        limit,
        interval,
        per_minute,
        seconds,
        last["ticket_calls"],
        int(last.get("accepted_total", len(last.get("accepted", [])))),
        {code: n for code, n in last["statuses"].items() if n},
        dead,
    )
