"""``make bench`` / ``python -m bench``: the worker against its peers, in one run.

Starts what it needs (a throwaway nginx as the API, see ``target.py``; the project's emulator
for the pacing part), gives every run its own queue with the worker's topology, measures each
contender as its own OS process, prints the tables and writes ``docs/BENCHMARKS.md`` with
``docs/benchmarks.png``. Everything it starts or declares is removed at the end, also on
Ctrl-C or SIGTERM.

    .venv/bin/python -m bench            # the full run, about 30 minutes (+ ~10, --baseline)
    .venv/bin/python -m bench --quick    # a smoke run of about 2 minutes; writes no docs
    .venv/bin/python -m bench --quick --baseline HEAD~3   # the worker of HEAD~3 beside it

``--baseline REF`` (``bench/baseline.py``) runs the worker of commit REF beside the current one
in the drain, memory and latency phases and in part of the pacing grid, so that "before" and
"after" come from one run on one machine.

Needs RabbitMQ on ``AMQP_URL`` (default ``amqp://guest:guest@127.0.0.1:5672/``), the
``bench`` extras (``pip install -e '.[bench]'``) and nginx with its echo module (installed
with apt-get when missing and run as root, else it says what to install).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar

from bench import report
from bench.attachments import attachments
from bench.attachments import table as attachments_table
from bench.baseline import Baseline, BaselineUnavailable, extract
from bench.broker import Broker, broker_lost
from bench.contenders import CONTENDERS, WORKER, Contender, Role, variant
from bench.events import (
    CategoriesResult,
    EventsResult,
    categories_drain,
    categories_table,
    events_drain,
)
from bench.measure import Session
from bench.pacing import ALGORITHMS, Emulator, PacingResult, pacing
from bench.phases import DrainResult, LatencyResult, RssResult, drain, latency, rss
from bench.procs import Children, find_pid
from bench.profile import profile_worker
from bench.target import NginxTarget, TargetUnavailable, ensure_nginx, nginx_version

REPO = Path(__file__).resolve().parent.parent
PHASES = ("drain", "rss", "latency", "pacing", "attachments", "events", "categories")
# Variables the worker reads: the harness must not hand its own environment's values to a
# contender that is meant to run with the defaults.
WORKER_PREFIXES = ("AMQP_", "SCX_", "WORKER_", "LOG_", "METRICS_", "BENCH_")

FULL = {
    "latencies": "0,20,100",
    "backlogs": "20000,6000,3000",
    "cap": 25.0,
    "rss_backlog": 100_000,
    "rss_seconds": 15.0,
    "steady_seconds": 20.0,
    "steady_warmup": 2.0,
    # The documented 60 per 60 s scaled in time, each over a whole number of intervals.
    "pacing_limits": "20/10:60,60/30:120",
    "events_count": 10_000,
    # Windows per route category (issue 18), scaled in time: channel L/I, events 4 x L.
    "categories": "30/30:90",
    # The last commit before the scale-out issue's work (pacing across workers, the events
    # bridge, ...): its figures are what that work must not make worse.
    "baseline": "0ce5a92",
}
QUICK = {
    "latencies": "0,100",
    "backlogs": "2000,200",
    "cap": 3.0,
    "rss_backlog": 3_000,
    "rss_seconds": 3.0,
    "steady_seconds": 2.0,
    "steady_warmup": 1.0,
    "pacing_limits": "10/5:10",
    "events_count": 1_000,
    "categories": "10/5:20",
    "baseline": "none",
}


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small smoke run (~2 min), no docs")
    p.add_argument("--only", default=",".join(PHASES), help=f"phases, of {','.join(PHASES)}")
    keys = ",".join(c.key for c in CONTENDERS)
    p.add_argument(
        "--contenders",
        help=f"of {keys}, worker-before (--baseline) and worker-LABEL of each --variant",
    )
    p.add_argument(
        "--variant", action="append", default=[], metavar="LABEL:KEY=VALUE[,KEY=VALUE]",
        help="also measure our worker with these settings, e.g. "
        "c32:WORKER_CONCURRENCY=32,AMQP_PREFETCH=64 (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--baseline", metavar="REF",
        help="also measure the worker of this git commit (none: do not; default: "
        f"{FULL['baseline']} in a full run, none with --quick)",
    )  # fmt: skip
    p.add_argument("--latencies", help="API latencies in ms, of 0,20,100")
    p.add_argument("--backlogs", help="backlog per latency, e.g. 20000,6000,3000")
    p.add_argument("--cap", type=float, help="seconds a drain may take after its first accept")
    p.add_argument("--rss-backlog", type=int)
    p.add_argument("--rss-seconds", type=float)
    p.add_argument("--steady-rate", type=float, default=200.0, help="msg/s for latency")
    p.add_argument("--steady-seconds", type=float)
    p.add_argument("--steady-warmup", type=float)
    p.add_argument(
        "--pacing-limits", metavar="L/I:S[,L/I:S]",
        help="emulator limits (L calls per I s), each measured for S s (whole intervals)",
    )  # fmt: skip
    p.add_argument("--pacing-workers", default="1,3")
    p.add_argument(
        "--pacing-algorithms", default=",".join(ALGORITHMS), help="how the emulator counts"
    )
    p.add_argument(
        "--pacing-bridge", default="without,with", help="without and/or with the events bridge"
    )
    p.add_argument(
        "--events-count",
        type=int,
        help="seller events the events bridge drains (at the first of --pacing-limits)",
    )
    p.add_argument(
        "--categories", metavar="L/I:S",
        help="the categories phase: channel window L per I s (the event window 4 x L), S s",
    )  # fmt: skip
    p.add_argument(
        "--profile", type=Path, metavar="FILE", help="also py-spy the worker at 0 ms, to FILE"
    )
    p.add_argument("--profile-seconds", type=float, default=15.0)
    p.add_argument("--out", type=Path, help="where BENCHMARKS.md and the chart go (default: "
                   "docs/ for a complete full run, nowhere for --quick or --only)")  # fmt: skip
    p.add_argument("--no-install", action="store_true", help="never apt-get install nginx")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs) for a look")
    p.add_argument(
        "--amqp-url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    selected = {x.strip() for x in args.only.split(",") if x.strip()}
    if args.out is None and not args.quick and selected == set(PHASES):
        args.out = REPO / "docs"  # only a complete run replaces the published figures
    for key in [k for k in os.environ if k.startswith(WORKER_PREFIXES)]:
        del os.environ[key]
    try:
        nginx = ensure_nginx(install=not args.no_install)
    except TargetUnavailable as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    children = Children()
    try:
        return asyncio.run(_run(args, nginx, children))
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped and removed", file=sys.stderr)
        return 130
    except Exception as exc:
        if not broker_lost(exc):
            raise
        print(
            f"bench: lost the broker ({type(exc).__name__}: {exc}); if RabbitMQ was restarted "
            "meanwhile, run it again",
            file=sys.stderr,
        )
        return 1
    finally:
        children.kill_remaining()


async def _run(args: argparse.Namespace, nginx: str, children: Children) -> int:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    os.chdir(REPO)  # `python -m worker` must find the package we measure
    workdir = Path(tempfile.mkdtemp(prefix="scx-bench-"))
    broker = Broker(args.amqp_url)
    target = NginxTarget(nginx, workdir, children)
    started = time.monotonic()
    try:
        baseline, results = _baseline(args.baseline, workdir)
        await broker.connect()
        host = report.machine(broker.version, nginx_version(nginx))
        await target.start()
        session = Session(broker, children, workdir, find_pid("beam.smp"))
        before = baseline.contender if baseline else None
        results = await _phases(args, session, target, before, results)
        host.load_after, host.seconds = os.getloadavg(), time.monotonic() - started
    finally:
        await children.stop_all()
        await broker.close()
        if args.keep:
            _say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    if results.baseline:
        print(f"before: {results.baseline}\n")
    print("\n".join(report.tables(results)))
    if results.profile:
        print(results.profile)
    if args.out is not None:
        _write(args, results, host)
    return 0


def _baseline(ref: str, workdir: Path) -> tuple[Baseline | None, report.Results]:
    """The earlier worker, if asked for and usable; the results say which or why not."""
    results = report.Results()
    if ref.lower() == "none":
        return None, results
    try:
        baseline = extract(ref, REPO, workdir)
    except BaselineUnavailable as exc:
        results.baseline = f"not run ({exc})"
        _say(f"before    {results.baseline}")
        return None, results
    results.baseline = baseline.describe()
    _say(f"before    {baseline.contender.label}: {baseline.subject}")
    return baseline, results


def _selected(args: argparse.Namespace, before: Contender | None) -> list[Contender]:
    try:
        variants = [variant(spec) for spec in args.variant]
    except ValueError as exc:
        raise SystemExit(f"bench: {exc}") from None
    earlier = [before] if before else []
    everyone = [*CONTENDERS[:1], *earlier, *variants, *CONTENDERS[1:]]
    if args.contenders is None:
        return everyone
    keys = [k.strip() for k in args.contenders.split(",")]
    unknown = set(keys) - {c.key for c in everyone}
    if unknown:
        raise SystemExit(f"bench: unknown contenders {', '.join(sorted(unknown))}")
    return [c for c in everyone if c.key in keys]


async def _phases(
    args: argparse.Namespace,
    session: Session,
    target: NginxTarget,
    before: Contender | None,
    results: report.Results,
) -> report.Results:
    phases = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = phases - set(PHASES)
    if unknown:
        raise SystemExit(f"bench: unknown phases {', '.join(sorted(unknown))}")
    contenders = _selected(args, before)
    if before is not None and before not in contenders:
        results.baseline = f"not run (--contenders leaves out {before.key})"
        before = None
    clock = time.monotonic()
    if "drain" in phases:
        results.drain = await _drain_phase(args, session, target, contenders)
        clock = _lap("drain", clock)
    if "rss" in phases:
        results.rss = await _rss_phase(args, session, target, contenders)
        clock = _lap("memory", clock)
    if "latency" in phases:
        results.latency = await _latency_phase(args, session, target, contenders)
        clock = _lap("latency", clock)
    if "pacing" in phases:
        results.pacing = await _pacing_phase(args, session, before)
        clock = _lap("pacing", clock)
    if "attachments" in phases:
        tickets = 4 if args.quick else 32
        run_it = partial(attachments, session, tickets=tickets)
        results.attachments = [await _again_on_broker_loss(session, run_it)]
        for line in attachments_table(results.attachments):
            _say(line)
        clock = _lap("attachments", clock)
    if "events" in phases:
        results.events = await _events_phase(args, session)
        clock = _lap("events", clock)
    if "categories" in phases:
        results.categories = await _categories_phase(args, session)
        clock = _lap("categories", clock)
    if args.profile is not None:
        backlog = int(args.profile_seconds * 1000)
        results.profile = await profile_worker(
            session, target, backlog=backlog, seconds=args.profile_seconds, out=args.profile
        )
        _say(f"profile   raw stacks in {args.profile}")
    return results


async def _drain_phase(
    args: argparse.Namespace, session: Session, target: NginxTarget, contenders: list[Contender]
) -> list[DrainResult]:
    latencies = [int(x) for x in _floats(args.latencies)]
    backlogs = [int(x) for x in _floats(args.backlogs)]
    if len(backlogs) != len(latencies):
        raise SystemExit("bench: --backlogs needs one number per --latencies entry")
    results = []
    for latency_ms, backlog in zip(latencies, backlogs, strict=True):
        for contender in contenders:
            if contender.role is Role.CEILING and latency_ms != latencies[0]:
                continue  # it calls no API: once is enough
            r = await _again_on_broker_loss(
                session,
                partial(drain, session, target, contender, latency_ms=latency_ms,
                        backlog=backlog, cap=args.cap),
            )  # fmt: skip
            results.append(r)
            _say(f"drain {latency_ms:>3} ms  {contender.label:<32} {r.done:>6,} done  "
                 f"{report.num(r.rate):>7} msg/s  {report.num(r.cpu_ms, 2):>6} ms CPU/msg  "
                 f"DLQ {r.dead_lettered}  {r.end}{': ' + r.error if r.error else ''}")  # fmt: skip
    return results


async def _rss_phase(
    args: argparse.Namespace, session: Session, target: NginxTarget, contenders: list[Contender]
) -> list[RssResult]:
    results = []
    for contender in contenders:
        r = await _again_on_broker_loss(
            session,
            partial(rss, session, target, contender, backlog=args.rss_backlog,
                    seconds=args.rss_seconds),
        )  # fmt: skip
        results.append(r)
        _say(f"memory    {contender.label:<32} {r.done:>6,} done  RSS start/peak/end "
             f"{report.num(r.start_mib, 1)} / {report.num(r.peak_mib, 1)} / "
             f"{report.num(r.end_mib, 1)} MiB{'  ' + r.error if r.error else ''}")  # fmt: skip
    return results


async def _latency_phase(
    args: argparse.Namespace, session: Session, target: NginxTarget, contenders: list[Contender]
) -> list[LatencyResult]:
    results = []
    for contender in (c for c in contenders if c.calls_api):
        r = await _again_on_broker_loss(
            session,
            partial(latency, session, target, contender, rate=args.steady_rate,
                    seconds=args.steady_seconds, warmup=args.steady_warmup),
        )  # fmt: skip
        results.append(r)
        _say(f"latency   {contender.label:<32} p50 {report.num(r.p50_ms, 1)} ms  "
             f"p99 {report.num(r.p99_ms, 1)} ms  CPU {report.num(r.cpu_pct)} %  "
             f"not accepted {r.missing}{'  ' + r.error if r.error else ''}")  # fmt: skip
    return results


async def _pacing_phase(
    args: argparse.Namespace, session: Session, before: Contender | None
) -> list[PacingResult]:
    """The grid: how the API counts x worker processes x without/with the events bridge; the
    earlier worker (``--baseline``) at the first limit only, without the bridge (it has none)."""
    results = []
    algorithms = [a.strip() for a in args.pacing_algorithms.split(",") if a.strip()]
    if unknown := set(algorithms) - set(ALGORITHMS):
        raise SystemExit(f"bench: unknown --pacing-algorithms {', '.join(sorted(unknown))}")
    bridges = [b.strip() == "with" for b in args.pacing_bridge.split(",") if b.strip()]
    for index, (limit, interval, seconds) in enumerate(_pacing_limits(args.pacing_limits)):
        cells = [(WORKER, bridge) for bridge in bridges]
        if before is not None and index == 0 and False in bridges:
            cells.append((before, False))
        emulator = Emulator(session, limit, interval)
        await emulator.start()
        try:
            for algorithm in algorithms:
                for workers in (int(x) for x in _floats(args.pacing_workers)):
                    for contender, bridge in cells:
                        r = await _again_on_broker_loss(
                            session, partial(pacing, session, emulator, contender,
                                             algorithm=algorithm, workers=workers,
                                             bridge=bridge, seconds=seconds),
                        )  # fmt: skip
                        results.append(r)
                        _say_pacing(r)
        finally:
            await emulator.stop()
    return results


def _pacing_limits(text: str) -> list[tuple[int, float, float]]:
    """``20/10:60,60/30:120`` -> [(20, 10.0, 60.0), (60, 30.0, 120.0)]."""
    limits = []
    for spec in (x.strip() for x in text.split(",") if x.strip()):
        try:
            rate, seconds = spec.split(":")
            limit, interval = rate.split("/")
            limits.append((int(limit), float(interval), float(seconds)))
        except ValueError:
            raise SystemExit(f"bench: --pacing-limits wants L/I:S, not {spec!r}") from None
    return limits


def _say_pacing(r: PacingResult) -> None:
    cell = (f"{r.limit}/{r.interval:g}s {r.algorithm:<7} {r.workers} worker(s)"
            f"{' + bridge' if r.bridge else '':<9} {r.worker:<17}")  # fmt: skip
    if not r.ran:
        _say(f"pacing    {cell}  {r.error}")
        return
    _say(f"pacing    {cell}  goodput {100 * r.goodput_share:.1f} % of the limit, 429 share "
         f"{100 * r.share_429:.1f} %, {r.statuses}, DLQ {r.dead_lettered}"
         f"{'  ' + r.error if r.error else ''}")  # fmt: skip


async def _events_phase(args: argparse.Namespace, session: Session) -> list[EventsResult]:
    limit, interval, _ = _pacing_limits(args.pacing_limits)[0]
    r = await _again_on_broker_loss(
        session,
        partial(events_drain, session, events=args.events_count, limit=limit, interval=interval),
    )
    _say(f"events    {r.events:,} events  {r.calls} calls ({r.needed} needed)  "
         f"{r.seconds:.1f} s, the limit allows {r.allowed_s:.1f} s: {r.ratio:.3f} x  "
         f"429s {r.statuses_429}{'  ' + r.error if r.error else ''}")  # fmt: skip
    return [r]


async def _categories_phase(args: argparse.Namespace, session: Session) -> list[CategoriesResult]:
    """2 workers + the bridge against one window per route category, fixed and bucket."""
    [(limit, interval, seconds)] = _pacing_limits(args.categories)
    results = []
    for algorithm in ("fixed", "bucket"):
        r = await _again_on_broker_loss(
            session,
            partial(categories_drain, session, algorithm=algorithm, events=args.events_count,
                    channel_limit=limit, event_limit=4 * limit, interval=interval,
                    seconds=seconds),
        )  # fmt: skip
        for line in categories_table([r]):
            _say(line)
        results.append(r)
    return results


T = TypeVar("T")


async def _again_on_broker_loss(session: Session, run: Callable[[], Awaitable[T]]) -> T:
    """Run one measurement; if the broker went away meanwhile (someone restarted RabbitMQ),
    wait for it and measure again from scratch (a fresh queue, a fresh process), twice at most.
    """
    for attempt in range(3):
        try:
            return await run()
        except Exception as exc:
            if attempt == 2 or not broker_lost(exc):
                raise
            _say(f"          lost the broker ({type(exc).__name__}); waiting, then this run again")
            await session.broker.wait_until_back()
    raise AssertionError("unreachable")


def _lap(phase: str, since: float) -> float:
    now = time.monotonic()
    _say(f"({phase}: {now - since:.0f} s)")
    return now


def _say(line: str) -> None:
    print(line, flush=True)


def _write(args: argparse.Namespace, results: report.Results, host: report.Machine) -> None:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "BENCHMARKS.md").write_text(
        report.document(results, host, report.command_line(), _method(args)) + "\n"
    )
    report.chart(results, out / "benchmarks.png")
    _say(f"wrote {out / 'BENCHMARKS.md'} and {out / 'benchmarks.png'}")


def _method(args: argparse.Namespace) -> list[str]:
    limits = _pacing_limits(args.pacing_limits)
    scaled = ", ".join(f"{lim} per {ivl:g} s (measured {sec:g} s)" for lim, ivl, sec in limits)
    per_minute = ", ".join(f"{lim * 60 / ivl:g}" for lim, ivl, _ in limits)
    before = """
  - *scx-forwarder before (<hash>)* (`--baseline REF`): the worker of an earlier commit,
    extracted with `git archive REF` into the run's temp dir and started the same way with the
    same environment, plus `PYTHONPATH` on that tree (`bench/baseline.py`); its own defaults
    for everything not set. It runs in drain, memory and latency like a `--variant` row."""
    pacing_before = (
        ' The earlier worker (`--baseline`, column "worker") runs the cells without\n'
        f"  the bridge (it has none) at the first limit only ({limits[0][0]} per "
        f"{limits[0][1]:g} s), to keep\n  the run's length reasonable."
    )
    if args.baseline.lower() == "none":
        before = pacing_before = ""
    text = f"""\
**Timings from a shared or busy machine are noisy** (on a VM, CPU time too: stolen time is
counted): compare figures from one run only, and re-take them on a quiet machine before
drawing conclusions. The load averages above say how quiet this one was.

How it measures (details in the docstrings of `bench/*.py`):

- **Target**: a throwaway nginx (Debian package + `libnginx-mod-http-echo`, one process, run as
  `nobody`) answers `POST /v1/auth` with a static token and `POST /v1/channel/ticket` with 201,
  at once (`return 201`) or after 20 / 100 ms (`echo_sleep`: a timer in nginx's event loop, no
  CPU burnt, nothing else slowed). Every answered ticket is one unbuffered access-log line with
  nginx's `$msec`.
- **Contenders**, each its own OS process, each run on a fresh quorum queue declared with the
  worker's own topology and preloaded with valid sample events (`worker/ops/samples.py`):
  - *scx-forwarder (defaults)*: `scx-forwarder run` with default settings; only the queue, the
    URL, the token and `SCX_MAX_REQUESTS_PER_MINUTE=0` (the target is not rate limited) are set,
    and `METRICS_PORT` gets a free port. `--variant` rows: the same with the settings shown.{before}
  - *ceiling*: aio-pika consume + ack (prefetch 128), no JSON, no HTTP
    (`bench/peers/raw_ceiling.py`);
  - *sequential*: the usual first script, aio-pika's README consumer (prefetch 10,
    `queue.iterator()`, `async with message.process()`) + one `httpx.AsyncClient`;
  - *FastStream*: `RabbitBroker` + `@broker.subscriber` + httpx, FastStream's defaults (no QoS,
    ack after the handler returns);
  - *tuned*: aio-pika with 64 concurrent handlers (prefetch 128) + one aiohttp `ClientSession`.
  The peers parse the JSON body, POST it with a bearer token from `/v1/auth` and ack on 2xx.
- **Drain rate**: accepted tickets over first-to-last accept as nginx logged them (for the
  ceiling, which calls nothing: messages the broker handed out between the first and the last
  sample, sampled every 50 ms). A run ends when the backlog is drained, {args.cap:g} s after the
  first accept ("capped": the rate is over what it drained), or when the queue is empty and
  nothing moved for 5 s ("stalled", e.g. messages rejected to the DLQ). The ceiling runs once
  (it calls no API) and is the reference at every latency.
- **CPU ms/msg**: user + system time of the contender's process (all threads,
  `/proc/PID/stat`, 10 ms ticks) from the last sample before its first message to its end,
  divided by the messages done meanwhile. "broker CPU" is RabbitMQ's `beam.smp` over the same
  span (shared: any other traffic on the broker counts too).
- **Memory**: RSS (`/proc/PID/statm`) sampled every 250 ms while the contender works for
  {args.rss_seconds:g} s on a {args.rss_backlog:,}-message backlog (0 ms API); start = the last
  sample before its first message.
- **Latency**: the contender consumes an empty queue; the harness publishes
  {args.steady_rate:g} msg/s for {args.steady_warmup + args.steady_seconds:g} s (the first
  {args.steady_warmup:g} s are warm-up, not counted), stamping the wall-clock time (µs) into each
  ticket id right before publishing; the access-log line (`$msec`, 1 ms resolution, same clock)
  of the POST carrying that id marks the accept. 0 ms API latency. A contender that cannot
  sustain the rate falls behind for the whole run: its latencies grow with the run's length
  (see max). The ceiling calls no API, so it has no row here.
- **Ratios**: "÷ ceiling" and "÷ best peer" divide by the ceiling's and by the best peer's
  figure from the same run (for msg/s higher is better, for everything else lower). A peer
  that lost messages to the DLQ or failed is no candidate for best peer.
- **Pacing**: the project's emulator,
  `scx-forwarder emulator --rate-limit L --rate-interval I` at {scaled}: the
  documented 60 per 60 s scaled in time, so that a run takes a minute or two. It counts the limit
  in each of three ways (`--rate-algorithm`: fixed windows that reset at once, a sliding window
  in which a call counts for I s, a token bucket of L refilled at L per I s). A backlog that
  outlasts the run, and 1 or 3 `scx-forwarder run` processes on one queue and one refresh token,
  each with `SCX_MAX_REQUESTS_PER_MINUTE` at the whole limit ({per_minute}); "+ bridge": one
  `scx-forwarder events` process polls seller events on the same credential beside them.
  Counted from the first `/v1/channel*` call, which opens the emulator's first interval, for a
  whole number of intervals, from `GET /_emulator/state`: goodput = calls answered with a 2xx
  (accepted tickets, and the bridge's polls and acknowledgements) / what the limit sustains in
  that time (L per I s; a token bucket also lets one full bucket through at the start, so its
  goodput can pass 100 %); 429 share = 429 answers / all `/v1/channel*` calls. A cell that did
  not run says why.{pacing_before}
- **Attachments**: 32 tickets with 10 URL attachments of 16 MiB each (5 GiB), served by a
  file server process and uploaded to the emulator (its own process, keeping size and SHA-256
  of each file), `scx-forwarder run` with its defaults; time from publishing the 32 events to
  the 320th file stored, the worker's peak RSS (`VmHWM`), every file's SHA-256 checked. Pure
  transfer: the same bytes over the same two loopback legs (download, upload to a sink), as
  many streams as `WORKER_ATTACHMENT_CONCURRENCY`, nothing else (`bench/attachments.py`).
- **Events bridge** (`bench/events.py`): {args.events_count:,} seller events queued in the
  emulator at the first pacing limit ({limits[0][0]} per {limits[0][1]:g} s), drained by one
  `scx-forwarder events` process (`EVENTS_BATCH_SIZE=100`, `SCX_MAX_REQUESTS_PER_MINUTE` = that
  limit per minute) into a queue bound to its exchange; from the first `/v1/channel/event` call
  to the last acknowledgement, from `GET /_emulator/state`. The calls needed are one poll per
  100 events and one acknowledgement per 100 ids; "the limit allows" is calls x interval /
  limit."""
    return text.splitlines()
