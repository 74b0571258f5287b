"""One contender, one queue, one run: start it, sample it, stop it, keep the samples.

Progress is counted outside the contender: for those that call the API, the 2xx lines nginx
logged since the run began (so a ticket counts once the target has answered it); for the
ceiling, which calls nothing, the messages the broker has handed out (backlog minus ready).
CPU (user + system, all threads) and RSS come from ``/proc/<pid>``; the broker's CPU from its
``beam.smp`` process.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.broker import Broker
from bench.contenders import Contender
from bench.procs import Children, usage
from bench.target import LogTail
from worker.core.settings import Settings


@dataclass(frozen=True)
class Sample:
    t: float
    """monotonic seconds"""
    progress: int
    cpu_s: float
    rss_bytes: int
    ready: int
    consumers: int
    broker_cpu_s: float


@dataclass
class Run:
    contender: Contender
    expected: int
    samples: list[Sample] = field(default_factory=list)
    accept_times: list[float] = field(default_factory=list)
    """epoch seconds of each 2xx nginx logged (API-calling contenders)"""
    dead_lettered: int = 0
    end: str = "drained"
    """drained | capped | stalled | error"""
    error: str | None = None

    @property
    def progress(self) -> int:
        return self.samples[-1].progress if self.samples else 0

    def first_active(self) -> int | None:
        """Index of the last sample before any progress (the CPU window starts there)."""
        for i, sample in enumerate(self.samples):
            if sample.progress > 0:
                return max(i - 1, 0)
        return None


@dataclass
class Session:
    broker: Broker
    children: Children
    workdir: Path
    broker_pid: int | None


def _broker_cpu(session: Session) -> float:
    if session.broker_pid is None:
        return 0.0
    found = usage(session.broker_pid)
    return found.cpu_s if found else 0.0


async def start_and_sample(
    session: Session,
    contender: Contender,
    settings: Settings,
    env: dict[str, str],
    *,
    tail: LogTail | None,
    expected: int,
    cap: float,
    interval: float,
    startup_timeout: float = 60.0,
    stall_after: float = 5.0,
    until_consuming: bool = False,
) -> tuple[Run, asyncio.subprocess.Process]:
    """Start ``contender`` and sample it until it has made ``expected`` progress, ``cap``
    seconds have passed since its first progress, it stalls (queue empty, no progress for
    ``stall_after`` s) or it fails. With ``until_consuming`` return as soon as it consumes.

    The process is returned still running: the caller stops it (after reading what it needs).
    """
    run = Run(contender, expected)
    log = session.workdir / f"{contender.key}.log"
    proc = await session.children.start(contender.argv, env, log=log)
    try:
        await _sample(session, run, proc, settings, log, tail, cap, interval, startup_timeout,
                      stall_after, until_consuming)  # fmt: skip
    except BaseException:
        await session.children.stop(proc)
        raise
    return run, proc


async def _sample(
    session: Session,
    run: Run,
    proc: asyncio.subprocess.Process,
    settings: Settings,
    log: Path,
    tail: LogTail | None,
    cap: float,
    interval: float,
    startup_timeout: float,
    stall_after: float,
    until_consuming: bool,
) -> None:
    expected = run.expected
    spawned = time.monotonic()
    first_progress: float | None = None
    last_change = spawned
    last_progress = -1
    while True:
        now = time.monotonic()
        found = usage(proc.pid)
        ready, consumers = await session.broker.depth(settings.amqp_queue)
        progress = tail.poll() if tail is not None else max(expected - ready, 0)
        if found is not None:
            run.samples.append(
                Sample(now, progress, found.cpu_s, found.rss_bytes, ready, consumers,
                       _broker_cpu(session))
            )  # fmt: skip
        if progress != last_progress:
            last_progress, last_change = progress, now
        if progress > 0 and first_progress is None:
            first_progress = now
        if until_consuming and consumers > 0:
            break
        if proc.returncode is not None or found is None:
            run.end, run.error = "error", f"exited with code {proc.returncode}: {_tail(log)}"
            break
        if progress >= expected:
            break
        if first_progress is None and now - spawned > startup_timeout:
            run.end, run.error = "error", f"no progress after {startup_timeout:.0f} s"
            break
        if first_progress is not None and now - first_progress > cap:
            run.end = "capped"
            break
        if ready == 0 and progress > 0 and now - last_change > stall_after:
            run.end = "stalled"
            break
        # Fine-grained until work starts (start-up RSS, the first accept), then ``interval``.
        await asyncio.sleep(interval if first_progress is not None else min(interval, 0.05))


async def finish(
    session: Session,
    run: Run,
    proc: asyncio.subprocess.Process,
    settings: Settings,
    tail: LogTail | None,
) -> Run:
    """Stop the contender, collect accept times and dead-letters, delete the queue."""
    await session.children.stop(proc, grace=30.0)
    if tail is not None:
        run.accept_times = tail.times()
    try:
        run.dead_lettered = (await session.broker.depth(settings.dead_letter_queue))[0]
    finally:
        await session.broker.delete(settings)
    return run


def _tail(log: Path, chars: int = 600) -> str:
    try:
        return log.read_text(errors="replace")[-chars:].strip()
    except FileNotFoundError:
        return "(no output)"
