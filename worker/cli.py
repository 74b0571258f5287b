"""``scx-forwarder`` (also ``python -m worker``): the worker and its companions.

Exit codes of ``run`` are listed in ``worker.core.errors`` (``EXIT_*``) and in
docs/guides/operations.md ("Exit codes").
The operations commands share them: ``check`` and ``dlq ...`` exit 0 when done, 1 when a
check failed or the command could not run (broker unreachable, a queue missing, a
replayed copy refused), 2 for a bad configuration or usage (``dlq purge`` without
``--yes``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import structlog

from worker import __version__
from worker.amqp.errors import BROKER_ERRORS
from worker.core.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from worker.core.runtime import until_signalled
from worker.core.settings import ConfigError, load_settings
from worker.obs.logging import configure_logging

if TYPE_CHECKING:
    from worker.ops.dlq import Filter

_T = TypeVar("_T")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except ConfigError as exc:
        print(f"scx-forwarder: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scx-forwarder",
        description="Forward marketplace ticket events from RabbitMQ to JTL's SCX Channel API.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="consume ticket events and forward them (the service)")
    run.add_argument(
        "--mapper",
        metavar="MODULE:FUNCTION",
        help="your own event -> Ticket mapping (overrides WORKER_MAPPER)",
    )
    run.set_defaults(command=_cmd_run)

    events = sub.add_parser(
        "events", help="poll SCX seller events and publish them to RabbitMQ (the bridge)"
    )
    events.set_defaults(command=_cmd_events)

    emu = sub.add_parser("emulator", help="run the local SCX API stand-in")
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument("--port", type=int, default=8080)
    emu.add_argument(
        "--refresh-token", default=None, help="accept only this one (default: any non-empty)"
    )
    emu.add_argument("--token-lifetime", type=float, default=3600.0, metavar="SECONDS")
    emu.add_argument("--latency", type=float, default=0.0, metavar="SECONDS")
    emu.add_argument("--rate-limit", type=int, default=None, metavar="N")
    emu.add_argument("--rate-interval", type=float, default=60.0, metavar="SECONDS")
    emu.add_argument(
        "--rate-algorithm",
        choices=("fixed", "sliding", "bucket"),
        default="fixed",
        help="how the limit counts: fixed windows, a sliding window or a token bucket",
    )
    emu.add_argument(
        "--fail-rate", type=float, default=0.0, metavar="FRACTION", help="random 5xx share"
    )
    emu.add_argument("--fail-status", type=int, default=503, metavar="STATUS")
    emu.add_argument(
        "--event-visibility",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="seconds a polled, unacknowledged seller event stays hidden",
    )
    emu.add_argument(
        "--conflict-on-duplicate",
        action="store_true",
        help="answer 409 Conflict to a repeated ticketId of the same seller (default: 201)",
    )
    emu.add_argument(
        "--event-max-deliveries",
        type=int,
        default=10,
        metavar="N",
        help="give a seller event up after N deliveries, as SCX (0: never)",
    )
    emu.add_argument(
        "--category-limits",
        action="store_true",
        help="one rate-limit window per route category, as JTL counts (--rate-limit is then "
        "the channel category's, 60 by default)",
    )
    for category, default in (("event", 240), ("order", 600), ("offer", 1500), ("default", 10)):
        emu.add_argument(
            f"--{category}-rate-limit",
            type=int,
            default=default,
            metavar="N",
            help=f"with --category-limits: the {category} category's limit per --rate-interval",
        )
    emu.set_defaults(command=_cmd_emulator)

    pub = sub.add_parser("publish", help="publish events from a JSON-lines file ('-' = stdin)")
    pub.add_argument("file", metavar="FILE.jsonl")
    pub.add_argument("--routing-key", help="default: AMQP_BINDING_KEY")
    pub.add_argument(
        "--cloudevents",
        choices=("binary", "structured"),
        help="publish events as CloudEvents in this content mode (default: plain JSON)",
    )
    pub.set_defaults(command=_cmd_publish)

    sample = sub.add_parser("sample", help="write sample events as JSON lines to stdout")
    sample.add_argument("--count", type=int, default=10, help="valid events")
    sample.add_argument("--invalid", type=int, default=0, help="bad bodies appended")
    sample.add_argument("--seed", type=int, default=7)
    sample.set_defaults(command=_cmd_sample)

    check = sub.add_parser(
        "check",
        help="smoke-test the configuration: broker, queues (passively), a token; exit 0 or 1",
    )
    check.add_argument(
        "--events",
        action="store_true",
        help="also the events bridge: its unrouted queue, and whether a bridge holds the lock",
    )
    check.set_defaults(command=_cmd_check)

    _add_dlq_parser(sub)
    return parser


def _add_dlq_parser(sub: Any) -> None:
    dlq = sub.add_parser("dlq", help="inspect, replay, purge or export <AMQP_QUEUE>.dlq")
    actions = dlq.add_subparsers(required=True, metavar="ACTION")

    def filters(parser: argparse.ArgumentParser, *, kind_required: bool = False) -> None:
        parser.add_argument(
            "--kind",
            required=kind_required,
            help="malformed, invalid, rejected, exhausted, delivery-limit, ...",
        )
        parser.add_argument("--ticket-id", help="only the ticket with this id")

    stats = actions.add_parser("stats", help="counts by x-error-kind, oldest and newest")
    stats.add_argument("--json", action="store_true", help="one JSON object")
    stats.set_defaults(command=_cmd_dlq_stats)

    listing = actions.add_parser("list", help="a table of dead-lettered messages")
    filters(listing)
    listing.add_argument("--limit", type=_count, default=100, help="at most N (0: all)")
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    listing.set_defaults(command=_cmd_dlq_list)

    replay = actions.add_parser("replay", help="move matching messages back to the work queue")
    filters(replay)
    replay.add_argument("--limit", type=_count, default=0, help="at most N (0: all)")
    replay.add_argument("--dry-run", action="store_true", help="count, move nothing")
    replay.set_defaults(command=_cmd_dlq_replay)

    purge = actions.add_parser("purge", help="delete matching messages (needs --yes)")
    filters(purge, kind_required=True)
    purge.add_argument("--yes", action="store_true", help="really delete them")
    purge.set_defaults(command=_cmd_dlq_purge)

    export = actions.add_parser("export", help="copy messages to JSON lines, removing nothing")
    export.add_argument("file", metavar="FILE.jsonl", help="'-' for stdout")
    filters(export)
    export.set_defaults(command=_cmd_dlq_export)


def _cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    refresh_token = settings.refresh_token()
    mapper_spec = args.mapper or settings.worker_mapper
    mapper = None
    if mapper_spec:
        from worker.forward.mapping import load_mapper

        try:
            mapper = load_mapper(mapper_spec)
        except ValueError as exc:
            raise ConfigError(f"WORKER_MAPPER / --mapper: {exc}") from None
    from worker.forward.service import serve
    from worker.obs import tracing

    with tracing.started(settings.otel_traces_exporter, settings.otel_service_name):
        return asyncio.run(serve(settings, refresh_token, mapper))


def _cmd_events(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    refresh_token = settings.refresh_token()
    from worker.events.service import serve_events
    from worker.obs import tracing

    with tracing.started(settings.otel_traces_exporter, settings.otel_service_name):
        return asyncio.run(serve_events(settings, refresh_token))


def _cmd_emulator(args: argparse.Namespace) -> int:
    from worker.emulator import EmulatorConfig, serve

    configure_logging("INFO", "auto")
    config = EmulatorConfig(
        refresh_token=args.refresh_token,
        token_lifetime=args.token_lifetime,
        latency=args.latency,
        rate_limit=args.rate_limit,
        rate_interval=args.rate_interval,
        rate_algorithm=args.rate_algorithm,
        fail_rate=args.fail_rate,
        fail_status=args.fail_status,
        event_visibility=args.event_visibility,
        conflict_on_duplicate=args.conflict_on_duplicate,
        event_max_deliveries=args.event_max_deliveries or None,
        category_limits=args.category_limits,
        event_rate_limit=args.event_rate_limit,
        order_rate_limit=args.order_rate_limit,
        offer_rate_limit=args.offer_rate_limit,
        default_rate_limit=args.default_rate_limit,
    )

    def ready(url: str) -> None:
        structlog.get_logger("worker.emulator").info("emulator.listening", url=url)

    async def emulate() -> int:
        await serve(config, args.host, args.port, ready=ready)
        return EXIT_OK

    # No drain to wait for: the first signal stops it, and it exits 0.
    return asyncio.run(until_signalled(emulate(), None))


def _cmd_publish(args: argparse.Namespace) -> int:
    from worker.ops.publish import Unroutable, publish_lines

    settings = load_settings()
    stream = sys.stdin.buffer if args.file == "-" else Path(args.file).open("rb")  # noqa: SIM115
    with stream:
        try:
            count = asyncio.run(
                publish_lines(
                    settings, stream, routing_key=args.routing_key, cloudevents=args.cloudevents
                )
            )
        except Unroutable as exc:
            print(f"scx-forwarder publish: {exc}", file=sys.stderr)
            return EXIT_FAILED
    print(
        f"published {count} messages to exchange {settings.amqp_exchange!r} "
        f"with routing key {args.routing_key or settings.amqp_binding_key!r}",
        file=sys.stderr,
    )
    return EXIT_OK


def _cmd_sample(args: argparse.Namespace) -> int:
    from worker.ops.samples import sample_lines

    out = sys.stdout.buffer
    for line in sample_lines(args.count, invalid=args.invalid, seed=args.seed):
        out.write(line + b"\n")
    out.flush()
    return EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    from worker.ops.check import check

    settings = load_settings()
    passed, report = asyncio.run(check(settings, events=args.events))
    print(report)
    return EXIT_OK if passed else EXIT_FAILED


def _cmd_dlq_stats(args: argparse.Namespace) -> int:
    from worker.ops import dlq, dlq_report

    settings = load_settings()
    by_kind = _dlq_run(dlq.stats(settings))
    if by_kind is None:
        return EXIT_FAILED
    if args.json:
        print(orjson.dumps(dlq_report.stats_json(by_kind)).decode())
    else:
        print(dlq_report.format_stats(settings.dead_letter_queue, by_kind, _now()))
    return EXIT_OK


def _cmd_dlq_list(args: argparse.Namespace) -> int:
    from worker.ops import dlq, dlq_report

    settings = load_settings()
    outcome = _dlq_run(dlq.list_entries(settings, _filter(args), args.limit))
    if outcome is None:
        return EXIT_FAILED
    now = _now()
    if args.json:
        out = sys.stdout.buffer
        for entry in outcome.entries:
            out.write(orjson.dumps(dlq_report.entry_json(entry, now)) + b"\n")
        out.flush()
        return EXIT_OK
    if outcome.entries:
        # Cut to the terminal's width; piped into a file or a pager, nothing is cut.
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 10_000
        print(dlq_report.format_table(outcome.entries, now, width))
    print(
        f"{len(outcome.entries)} of {outcome.matched} matching messages shown "
        f"({outcome.scanned} in {settings.dead_letter_queue!r}; --limit 0 shows all)",
        file=sys.stderr,
    )
    return EXIT_OK


def _cmd_dlq_replay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from worker.ops import dlq

    settings = load_settings()
    # A bar on a terminal only (disable=None); scripts and logs get the summary line.
    with tqdm(unit="msg", disable=None, file=sys.stderr, desc="scanned") as bar:

        def progress(scanned: int, total: int, moved: int) -> None:
            bar.total = total
            bar.set_postfix(replayed=moved, refresh=False)
            bar.update(scanned - bar.n)

        outcome = _dlq_run(
            dlq.replay(
                settings,
                _filter(args),
                limit=args.limit,
                dry_run=args.dry_run,
                progress=progress,
            )
        )
    if outcome is None:
        return EXIT_FAILED
    done = f"would replay {outcome.selected}" if args.dry_run else f"replayed {outcome.acted}"
    print(
        f"{done} of {outcome.matched} matching messages ({_filter(args)}; "
        f"{outcome.scanned} scanned) from {settings.dead_letter_queue!r} "
        f"to {settings.amqp_queue!r}"
    )
    return EXIT_OK


def _cmd_dlq_purge(args: argparse.Namespace) -> int:
    from worker.ops import dlq

    if not args.yes:
        print(
            "scx-forwarder dlq purge: deletes messages for good; add --yes to go ahead "
            "(see them first with: scx-forwarder dlq list --kind ...)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    settings = load_settings()
    outcome = _dlq_run(dlq.purge(settings, _filter(args)))
    if outcome is None:
        return EXIT_FAILED
    print(
        f"deleted {outcome.acted} of {outcome.scanned} messages ({_filter(args)}) "
        f"from {settings.dead_letter_queue!r}"
    )
    return EXIT_OK


def _cmd_dlq_export(args: argparse.Namespace) -> int:
    from worker.ops import dlq

    settings = load_settings()
    to_stdout = args.file == "-"
    try:
        stream = sys.stdout.buffer if to_stdout else Path(args.file).open("wb")  # noqa: SIM115
    except OSError as exc:
        print(
            f"scx-forwarder dlq export: cannot write {args.file}: {exc.strerror}", file=sys.stderr
        )
        return EXIT_FAILED
    with contextlib.nullcontext(stream) if to_stdout else stream:
        outcome = _dlq_run(dlq.export(settings, stream, _filter(args)))
    if outcome is None:
        return EXIT_FAILED
    print(
        f"exported {outcome.matched} of {outcome.scanned} messages from "
        f"{settings.dead_letter_queue!r} to {args.file}; the queue keeps them all",
        file=sys.stderr,
    )
    return EXIT_OK


def _dlq_run(coro: Coroutine[Any, Any, _T]) -> _T | None:
    """Run a dlq command; print why it could not run (None), never a URL's password."""
    from worker.ops.dlq import DlqError

    try:
        return asyncio.run(coro)
    except DlqError as exc:
        print(f"scx-forwarder dlq: {exc}", file=sys.stderr)
    except BROKER_ERRORS as exc:
        # Unacked messages go back to the DLQ with the connection; nothing is lost. The
        # exception's text is not printed: it might quote a URL.
        print(
            f"scx-forwarder dlq: stopped by {type(exc).__name__} (broker unreachable, "
            "connection lost, or a write failed); what was not moved stays in the DLQ",
            file=sys.stderr,
        )
    return None


def _filter(args: argparse.Namespace) -> Filter:
    from worker.ops.dlq import Filter

    return Filter(kind=args.kind, ticket_id=args.ticket_id)


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


def _now() -> datetime:
    return datetime.now(UTC)
