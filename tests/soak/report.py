"""What a soak run leaves behind: ``result.json``, a section of docs/RELIABILITY.md, a chart.

The section goes at the end of the page, after ``MARKER`` (one section per run, newest
last); the chart (``docs/soak.png``) plots the messages reaching SCX and the seller-event
messages reaching the broker per 10 s, with each fault as a band in its class's row.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from tests.soak.faults import CLASSES
from tests.soak.ledger import to_json
from tests.soak.runner import Result

MARKER = "## Soak runs (`make soak`)"
INTRO = """
Every feature at once under a seeded random fault schedule, reconciled by a ledger
(`tests/soak/`, docs/guides/soak.md): conversations with files by URL and inline, every class of
invalid event, seller events with files, two workers and two bridges on the 3-node cluster,
the Redis progress record and outcome events on, tokens expiring every 5 s, random 503s and
bursts of them. A run fails on any loss (message, file, seller event), any invalid message
sent or missing from the DLQ, any valid one dead-lettered, a process that exited on its own
or not within its grace, a secret in a log line, or duplicates over the README's bound
(`AMQP_PREFETCH` per worker per lost connection or crash; the bridge's batch per crash).
"""


def as_json(result: Result) -> dict[str, Any]:
    config = result.config
    return {
        "passed": result.passed,
        "seed": config.seed,
        "minutes": config.minutes,
        "rate": config.rate,
        "seller_rate": config.seller_rate,
        "started": result.started,
        "machine": result.machine,
        "traffic_s": round(result.traffic_s, 1),
        "settle_s": round(result.settle_s, 1),
        "settled": result.settled,
        "longest_wait": [result.longest_wait[0], round(result.longest_wait[1], 1)],
        "books": to_json(result.books),
        "invalid_classes": result.invalid_classes,
        "faults": [
            {
                "fault": d.fault,
                "started_at": round(d.started_at, 1),
                "ended_at": round(d.ended_at, 1),
                "detail": d.detail,
            }
            for d in result.faults
        ],
        "fault_errors": result.fault_errors,
        "exits": result.exits,
        "api": result.api,
        "not_json": result.not_json,
        "timeline": [
            [round(s.at, 1), s.forwarded, s.seller_messages, s.dead] for s in result.timeline
        ],
    }


def write_json(result: Result, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(as_json(result), option=orjson.OPT_INDENT_2))


def section(result: Result, chart: str | None) -> str:
    config, books = result.config, result.books
    by_class = Counter(d.fault for d in result.faults)
    verdict = "**passed**" if result.passed else "**FAILED**"
    waited_id, waited = result.longest_wait
    published = books.counts.get("messages", 0) + books.counts.get("invalid", 0)
    api = result.api
    statuses = ", ".join(f"{k} {v:,}" for k, v in sorted(api.get("route_statuses", {}).items()))
    counts = ", ".join(f"{k} {v:,}" for k, v in books.counts.items())
    faults = ", ".join(f"{fault} {by_class[fault]}" for fault in CLASSES if by_class[fault])
    duplicates = ", ".join(
        f"{kind} {n}" + (f" (bound {books.bounds[kind]})" if kind in books.bounds else "")
        for kind, n in books.duplicates.items()
    )
    lines = [
        f"### Seed {config.seed}, {config.minutes:g} minutes ({result.started}): {verdict}",
        "",
        f"Machine: {result.machine}. Traffic {config.rate:g} messages/s asked "
        f"({published / max(result.traffic_s, 1):.1f}/s published) and "
        f"{config.seller_rate:g} seller events/s for {result.traffic_s:.0f} s; everything "
        f"settled {result.settle_s:.0f} s later"
        + ("." if result.settled else " **did not settle** within the timeout."),
        "",
        f"- Counts: {counts}.",
        f"- Faults ({len(result.faults)}): {faults}.",
        f"- Duplicates: {duplicates}.",
        f"- Longest wait from publish to SCX: {waited:.1f} s ({waited_id}).",
        f"- SCX: {api.get('auth_calls', 0):,} token calls; seller events delivered again "
        f"{api.get('events_redelivered', 0):,} times, given up {api.get('events_given_up', 0)}; "
        f"reply deliveries left unacknowledged for a failing file "
        f"{api.get('reply_file_failures', 0)}; answers by route: {statuses}.",
        f"- Invalid classes: {len(result.invalid_classes)} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(result.invalid_classes.items()))}).",
    ]
    if books.problems:
        lines.append(f"- Problems: {books.summary()}.")
    if result.fault_errors:
        lines.append(f"- Faults that could not be injected: {'; '.join(result.fault_errors)}.")
    if chart:
        lines += ["", f"![Throughput and faults, seed {config.seed}]({chart})"]
    return "\n".join(lines) + "\n"


def append_section(result: Result, page: Path, chart: str | None) -> None:
    text = page.read_text(encoding="utf-8") if page.exists() else "# Reliability\n"
    if MARKER not in text:
        text = text.rstrip("\n") + "\n\n" + MARKER + "\n" + INTRO
    page.write_text(text.rstrip("\n") + "\n\n" + section(result, chart), encoding="utf-8")


def chart(result: Result, path: Path) -> None:
    """Throughput per 10 s and the faults over time, as a PNG (matplotlib, the bench extra)."""
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    timeline = result.timeline
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(12, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    for label, totals in (
        ("messages reaching SCX", [s.forwarded for s in timeline]),
        ("seller-event messages published", [s.seller_messages for s in timeline]),
    ):
        top.plot(*_per_second([s.at for s in timeline], totals), label=label)
    top.set_ylabel("per second (10 s bins)")
    top.legend(loc="upper right")
    top.set_title(
        f"Soak, seed {result.config.seed}, {result.config.minutes:g} min: "
        + ("passed" if result.passed else "FAILED")
    )
    rows = {fault: i for i, fault in enumerate(CLASSES)}
    for done in result.faults:
        bottom.broken_barh(
            [(done.started_at / 60, max(done.ended_at - done.started_at, 1) / 60)],
            (rows[done.fault] - 0.4, 0.8),
        )
    bottom.set_yticks(range(len(CLASSES)), CLASSES)
    bottom.set_xlabel("minutes")
    bottom.axvline(result.traffic_s / 60, color="grey", linestyle="--")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _per_second(
    times: list[float], totals: list[int], step: float = 10.0
) -> tuple[list[float], list[float]]:
    """Running totals sampled every second, as rates per ``step`` seconds (x in minutes)."""
    xs, ys, last, last_at = [], [], 0, 0.0
    for at, total in zip(times, totals, strict=True):
        if at - last_at >= step:
            xs.append(at / 60)
            ys.append((total - last) / (at - last_at))
            last, last_at = total, at
    return xs, ys
