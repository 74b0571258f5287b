"""The three measurements against nginx: drain rate, memory under a big backlog, latency.

Each run uses a fresh queue (worker topology), a fresh contender process and the nginx port
of the API latency under test; see ``measure.py`` for how a run is sampled.
"""

from __future__ import annotations

import asyncio
import random
import re
import statistics
import time
from dataclasses import dataclass, field

import orjson

from bench.contenders import Contender
from bench.measure import Run, Session, finish, start_and_sample
from bench.procs import usage
from bench.target import LogTail, NginxTarget
from worker.ops.samples import sample_lines, valid_event

MIB = 1024 * 1024


@dataclass
class DrainResult:
    contender: Contender
    latency_ms: int
    backlog: int
    done: int
    seconds: float | None
    rate: float | None
    cpu_ms: float | None
    broker_cpu_ms: float | None
    dead_lettered: int
    end: str
    error: str | None


def drain_figures(run: Run, latency_ms: int) -> DrainResult:
    """Rate over what was drained: first to last accept as nginx logged them (for the
    ceiling: first to last sample of the broker handing messages out)."""
    seconds = rate = cpu_ms = broker_ms = None
    done = 0
    if run.contender.calls_api:
        times = sorted(run.accept_times)
        done = len(times)
        if done > 1 and times[-1] > times[0]:
            seconds = times[-1] - times[0]
            rate = (done - 1) / seconds
    else:
        active = [s for s in run.samples if s.progress > 0]
        done = run.progress
        if len(active) > 1 and active[-1].t > active[0].t:
            seconds = active[-1].t - active[0].t
            rate = (active[-1].progress - active[0].progress) / seconds
    start = run.first_active()
    if start is not None and run.samples:
        a, b = run.samples[start], run.samples[-1]
        if b.progress > a.progress:
            cpu_ms = (b.cpu_s - a.cpu_s) * 1000 / (b.progress - a.progress)
            broker_ms = (b.broker_cpu_s - a.broker_cpu_s) * 1000 / (b.progress - a.progress)
    return DrainResult(
        run.contender, latency_ms, run.expected, done, seconds, rate, cpu_ms, broker_ms,
        run.dead_lettered, run.end, run.error,
    )  # fmt: skip


async def drain(
    session: Session,
    target: NginxTarget,
    contender: Contender,
    *,
    latency_ms: int,
    backlog: int,
    cap: float,
) -> DrainResult:
    settings = await session.broker.new_queue()
    await session.broker.publish_backlog(settings, list(sample_lines(backlog)))
    tail = LogTail(target.accept_log(latency_ms)) if contender.calls_api else None
    env = contender.env(settings, target.url(latency_ms))
    run, proc = await start_and_sample(
        session, contender, settings, env, tail=tail, expected=backlog, cap=cap, interval=0.05
    )
    await finish(session, run, proc, settings, tail)
    return drain_figures(run, latency_ms)


@dataclass
class RssResult:
    contender: Contender
    backlog: int
    seconds: float
    done: int
    start_mib: float | None
    peak_mib: float | None
    end_mib: float | None
    series: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since the process started, RSS MiB)"""
    error: str | None = None


async def rss(
    session: Session, target: NginxTarget, contender: Contender, *, backlog: int, seconds: float
) -> RssResult:
    """RSS over ``seconds`` of work on a ``backlog``-message queue (0 ms API)."""
    settings = await session.broker.new_queue()
    await session.broker.publish_backlog(settings, list(sample_lines(backlog)))
    tail = LogTail(target.accept_log(0)) if contender.calls_api else None
    env = contender.env(settings, target.url(0))
    run, proc = await start_and_sample(
        session, contender, settings, env, tail=tail, expected=backlog, cap=seconds,
        interval=0.25, stall_after=seconds,
    )  # fmt: skip
    await finish(session, run, proc, settings, tail)
    samples = run.samples
    start = run.first_active()
    if not samples or start is None:
        return RssResult(contender, backlog, seconds, 0, None, None, None, error=run.error)
    t0 = samples[0].t
    return RssResult(
        contender,
        backlog,
        seconds,
        run.progress,
        samples[start].rss_bytes / MIB,
        max(s.rss_bytes for s in samples) / MIB,
        samples[-1].rss_bytes / MIB,
        [(s.t - t0, s.rss_bytes / MIB) for s in samples],
        run.error,
    )


@dataclass
class LatencyResult:
    contender: Contender
    rate: float
    published: int
    measured: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    cpu_pct: float | None
    """CPU of the contender while it kept up with the steady rate, % of one core"""
    missing: int
    error: str | None = None


STAMP = re.compile(rb"lat-(\d+)-(\d+)")


def stamped_event(i: int, rng: random.Random) -> bytes:
    """A valid ticket event whose ticket id carries its publish time (epoch microseconds)."""
    event = valid_event(i, rng)
    event["data"]["ticket_id"] = f"lat-{i:06d}-{time.time_ns() // 1000}"
    return orjson.dumps(event)


async def latency(
    session: Session,
    target: NginxTarget,
    contender: Contender,
    *,
    rate: float,
    seconds: float,
    warmup: float,
) -> LatencyResult:
    """Publish-to-accept latency at a steady ``rate``: the publisher stamps the time into the
    ticket id right before publishing, nginx logs ``$msec`` when it answered the POST."""
    settings = await session.broker.new_queue()
    tail = LogTail(target.stamped_log)
    env = contender.env(settings, target.stamped_url)
    run, proc = await start_and_sample(
        session, contender, settings, env, tail=tail, expected=1, cap=60, interval=0.05,
        until_consuming=True,
    )  # fmt: skip
    warm = int(rate * warmup)
    count = int(rate * seconds)
    rng = random.Random(7)
    cpu_pct = None
    missing = warm + count
    try:
        if run.error is None:
            await session.broker.publish_paced(
                settings, lambda i: stamped_event(i, rng), rate=rate, count=warm
            )
            before, t0 = usage(proc.pid), time.monotonic()
            await session.broker.publish_paced(
                settings, lambda i: stamped_event(warm + i, rng), rate=rate, count=count
            )
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if tail.poll() >= warm + count:
                    break
                await asyncio.sleep(0.05)
            after, t1 = usage(proc.pid), time.monotonic()
            if before is not None and after is not None:
                cpu_pct = 100 * (after.cpu_s - before.cpu_s) / (t1 - t0)
            missing = max(warm + count - tail.poll(), 0)
    finally:
        await finish(session, run, proc, settings, tail)
    delays = []
    for line in tail.lines():
        stamp, status, body = [*line.split(b" ", 2), b"", b""][:3]
        match = STAMP.search(body)
        if status.startswith(b"2") and match and int(match[1]) >= warm:
            delays.append(float(stamp) * 1000 - int(match[2]) / 1000)
    p50 = p99 = worst = None
    if len(delays) >= 2:
        cuts = statistics.quantiles(delays, n=100, method="inclusive")
        p50, p99, worst = cuts[49], cuts[98], max(delays)
    return LatencyResult(
        contender, rate, warm + count, len(delays), p50, p99, worst, cpu_pct, missing, run.error
    )
