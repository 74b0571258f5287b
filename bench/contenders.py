"""Who is measured: our worker, the raw ceiling and three peers, each as its own process."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from bench.target import free_port
from worker.core.settings import Settings

PEERS_DIR = Path(__file__).resolve().parent / "peers"
REFRESH_TOKEN = "bench-refresh-token"


class Role(Enum):
    OURS = "ours"
    CEILING = "ceiling"
    PEER = "peer"


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    role: Role
    argv: tuple[str, ...]
    calls_api: bool = True
    overrides: tuple[tuple[str, str], ...] = ()
    """extra environment of a worker variant (``--variant``)"""
    source: Path | None = None
    """the checkout whose ``worker`` package it runs, when not this one (``--baseline``)"""
    version: str = "current"
    """the pacing table's name for it: current, or before (<short hash>)"""

    def checkout_env(self) -> dict[str, str]:
        """What makes ``python -m worker`` import the package in ``source``: ``PYTHONPATH``,
        and ``PYTHONSAFEPATH`` so that ``-m`` does not put the harness's working directory,
        this checkout, in front of it."""
        if self.source is None:
            return {}
        return {"PYTHONPATH": str(self.source), "PYTHONSAFEPATH": "1"}

    def env(self, settings: Settings, api_url: str, **extra: str) -> dict[str, str]:
        """The child's environment: the harness's (stripped of every worker variable in
        ``run.main``) plus where to find the queue and the API."""
        env = dict(os.environ)
        amqp_url = settings.amqp_url.get_secret_value()
        if self.role is Role.OURS:
            env |= {
                "AMQP_URL": amqp_url,
                "AMQP_EXCHANGE": settings.amqp_exchange,
                "AMQP_QUEUE": settings.amqp_queue,
                "EVENTS_UNROUTED_QUEUE": settings.events_unrouted_queue,
                "EVENTS_LOCK_NAME": settings.events_lock_name,
                "SCX_API_URL": api_url,
                "SCX_REFRESH_TOKEN": REFRESH_TOKEN,
                # The target is not rate limited; everything else stays at its default.
                "SCX_MAX_REQUESTS_PER_MINUTE": "0",
                # The metrics/probe server stays on, on a port of its own (several workers
                # run at once in the pacing benchmark, and 9090 may be taken).
                "METRICS_PORT": str(free_port()),
                "METRICS_HOST": "127.0.0.1",
            }
        else:
            env |= {
                "AMQP_URL": amqp_url,
                "BENCH_QUEUE": settings.amqp_queue,
                "SCX_API_URL": api_url,
                "SCX_REFRESH_TOKEN": REFRESH_TOKEN,
            }
        return env | self.checkout_env() | dict(self.overrides) | extra


def _peer(name: str) -> tuple[str, ...]:
    return (sys.executable, str(PEERS_DIR / f"{name}.py"))


WORKER = Contender(
    "worker", "scx-forwarder (defaults)", Role.OURS, (sys.executable, "-m", "worker", "run")
)
CONTENDERS: tuple[Contender, ...] = (
    WORKER,
    Contender("ceiling", "ceiling: aio-pika ack only", Role.CEILING, _peer("raw_ceiling"), False),
    Contender("sequential", "aio-pika + httpx, sequential", Role.PEER, _peer("sequential_httpx")),
    Contender("faststream", "FastStream + httpx (defaults)", Role.PEER, _peer("faststream_httpx")),
    Contender("aiohttp", "aio-pika x64 + aiohttp (tuned)", Role.PEER, _peer("tuned_aiohttp")),
)


def variant(spec: str) -> Contender:
    """``LABEL:KEY=VALUE,KEY=VALUE``: our worker with these settings changed."""
    label, sep, assignments = spec.partition(":")
    pairs = [a.partition("=") for a in assignments.split(",") if a.strip()]
    if not sep or not label.strip() or not pairs or any(not k or not eq for k, eq, _ in pairs):
        raise ValueError(f"--variant {spec!r}: expected LABEL:KEY=VALUE[,KEY=VALUE...]")
    overrides = tuple((k.strip(), v.strip()) for k, _, v in pairs)
    text = ", ".join(f"{k}={v}" for k, v in overrides)
    return Contender(
        f"worker-{label.strip()}", f"scx-forwarder ({text})", Role.OURS, WORKER.argv,
        overrides=overrides,
    )  # fmt: skip
