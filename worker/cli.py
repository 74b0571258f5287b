"""``scx-forwarder`` (also ``python -m worker``): the worker and its companions.

Exit codes of ``run`` are listed in ``worker.errors`` (``EXIT_*``) and in the README.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import structlog

from worker.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from worker.logging import configure_logging
from worker.settings import ConfigError, load_settings


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
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="consume ticket events and forward them (the service)")
    run.add_argument(
        "--mapper",
        metavar="MODULE:FUNCTION",
        help="your own event -> Ticket mapping (overrides WORKER_MAPPER)",
    )
    run.set_defaults(command=_cmd_run)

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
        "--fail-rate", type=float, default=0.0, metavar="FRACTION", help="random 5xx share"
    )
    emu.add_argument("--fail-status", type=int, default=503, metavar="STATUS")
    emu.set_defaults(command=_cmd_emulator)

    pub = sub.add_parser("publish", help="publish events from a JSON-lines file ('-' = stdin)")
    pub.add_argument("file", metavar="FILE.jsonl")
    pub.add_argument("--routing-key", help="default: AMQP_BINDING_KEY")
    pub.set_defaults(command=_cmd_publish)

    sample = sub.add_parser("sample", help="write sample events as JSON lines to stdout")
    sample.add_argument("--count", type=int, default=10, help="valid events")
    sample.add_argument("--invalid", type=int, default=0, help="bad bodies appended")
    sample.add_argument("--seed", type=int, default=7)
    sample.set_defaults(command=_cmd_sample)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    refresh_token = settings.refresh_token()
    mapper_spec = args.mapper or settings.worker_mapper
    mapper = None
    if mapper_spec:
        from worker.mapping import load_mapper

        try:
            mapper = load_mapper(mapper_spec)
        except ValueError as exc:
            raise ConfigError(f"WORKER_MAPPER / --mapper: {exc}") from None
    from worker.service import serve

    return asyncio.run(serve(settings, refresh_token, mapper))


def _cmd_emulator(args: argparse.Namespace) -> int:
    from worker.emulator import EmulatorConfig, serve

    configure_logging("INFO", "auto")
    config = EmulatorConfig(
        refresh_token=args.refresh_token,
        token_lifetime=args.token_lifetime,
        latency=args.latency,
        rate_limit=args.rate_limit,
        rate_interval=args.rate_interval,
        fail_rate=args.fail_rate,
        fail_status=args.fail_status,
    )

    def ready(url: str) -> None:
        structlog.get_logger("worker.emulator").info("emulator.listening", url=url)

    return _until_signal(serve(config, args.host, args.port, ready=ready))


def _cmd_publish(args: argparse.Namespace) -> int:
    from worker.publish import Unroutable, publish_lines

    settings = load_settings()
    stream = sys.stdin.buffer if args.file == "-" else Path(args.file).open("rb")  # noqa: SIM115
    with stream:
        try:
            count = asyncio.run(publish_lines(settings, stream, routing_key=args.routing_key))
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
    from worker.samples import sample_lines

    out = sys.stdout.buffer
    for line in sample_lines(args.count, invalid=args.invalid, seed=args.seed):
        out.write(line + b"\n")
    out.flush()
    return EXIT_OK


def _until_signal(coro: Coroutine[Any, Any, None]) -> int:
    """Run ``coro`` until it ends or SIGTERM/SIGINT cancels it."""

    async def runner() -> None:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(runner())
    return EXIT_OK
