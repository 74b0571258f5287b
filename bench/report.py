"""Tables (stdout and docs/BENCHMARKS.md) and the chart (docs/benchmarks.png)."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from bench.attachments import AttachmentsResult
from bench.attachments import table as attachments_table
from bench.contenders import Role
from bench.events import CategoriesResult, EventsResult, categories_table, events_table
from bench.pacing import PacingResult
from bench.phases import DrainResult, LatencyResult, RssResult


@dataclass
class Results:
    drain: list[DrainResult] = field(default_factory=list)
    rss: list[RssResult] = field(default_factory=list)
    latency: list[LatencyResult] = field(default_factory=list)
    pacing: list[PacingResult] = field(default_factory=list)
    attachments: list[AttachmentsResult] = field(default_factory=list)
    events: list[EventsResult] = field(default_factory=list)
    categories: list[CategoriesResult] = field(default_factory=list)
    profile: str | None = None
    baseline: str | None = None
    """the "before:" line (``--baseline``): the earlier commit measured, or why it was not"""


@dataclass
class Machine:
    cpu: str
    cores: int
    kernel: str
    python: str
    broker: str
    nginx: str
    packages: str
    started: datetime
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seconds: float = 0.0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions() -> str:
    names = ("aio-pika", "aiormq", "httpx", "httpcore", "aiohttp", "faststream", "orjson")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def machine(broker: str, nginx: str) -> Machine:
    return Machine(
        cpu=cpu_model(),
        cores=os.cpu_count() or 0,
        kernel=f"{platform.system()} {platform.release()}",
        python=f"{platform.python_implementation()} {platform.python_version()}",
        broker=broker,
        nginx=nginx,
        packages=package_versions(),
        started=datetime.now(UTC),
        load_before=os.getloadavg(),
    )


# --- formatting -----------------------------------------------------------------------


def num(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _ratio(value: float | None, ref: float | None) -> str:
    if value is None or ref is None or ref == 0:
        return "–"
    return f"{value / ref:.2f}×"


def _best(values: Sequence[float | None], pick: Callable[[Sequence[float]], float]) -> float | None:
    present = [v for v in values if v is not None]
    return pick(present) if present else None


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def drain_table(results: Sequence[DrainResult]) -> list[str]:
    ceiling = next((r for r in results if r.contender.role is Role.CEILING), None)
    rows = []
    for latency in sorted({r.latency_ms for r in results}):
        same = [r for r in results if r.latency_ms == latency]
        # Best peer: peers that lost nothing to the DLQ and did not fail.
        fair = [r for r in same if r.contender.role is Role.PEER and _clean(r)]
        best_rate = _best([r.rate for r in fair], max)
        best_cpu = _best([r.cpu_ms for r in fair], min)
        for r in same:
            if r.contender.role is Role.CEILING and r.latency_ms != latency:
                continue
            rows.append(
                [
                    f"{latency} ms" if r.contender.calls_api else "–",
                    r.contender.label,
                    f"{r.backlog:,}",
                    f"{r.done:,}",
                    _end(r.end, r.error),
                    num(r.rate),
                    _ratio(r.rate, ceiling.rate if ceiling else None),
                    _ratio(r.rate, best_rate),
                    num(r.cpu_ms, 2),
                    _ratio(r.cpu_ms, ceiling.cpu_ms if ceiling else None),
                    _ratio(r.cpu_ms, best_cpu),
                    num(r.broker_cpu_ms, 2),
                    f"{r.dead_lettered:,}",
                ]
            )
    header = ["API latency", "contender", "backlog", "done", "end", "msg/s", "÷ ceiling",
              "÷ best peer", "CPU ms/msg", "÷ ceiling", "÷ best peer", "broker CPU ms/msg",
              "DLQ"]  # fmt: skip
    return _table(header, rows)


def _clean(r: DrainResult) -> bool:
    return r.error is None and r.dead_lettered == 0


def _end(end: str, error: str | None) -> str:
    if error:
        return f"error: {error.splitlines()[0][:80]}"
    return end


def rss_table(results: Sequence[RssResult]) -> list[str]:
    ceiling = next((r for r in results if r.contender.role is Role.CEILING), None)
    peers = [r for r in results if r.contender.role is Role.PEER and r.error is None]
    best = _best([r.peak_mib for r in peers], min)
    rows = [
        [
            r.contender.label,
            f"{r.backlog:,}",
            f"{r.done:,} in {r.seconds:.0f} s",
            num(r.start_mib, 1),
            num(r.peak_mib, 1),
            num(r.end_mib, 1),
            _ratio(r.peak_mib, ceiling.peak_mib if ceiling else None),
            _ratio(r.peak_mib, best),
            r.error.splitlines()[0][:80] if r.error else "",
        ]
        for r in results
    ]
    header = ["contender", "backlog", "processed", "RSS start MiB", "peak MiB", "end MiB",
              "peak ÷ ceiling", "peak ÷ best peer", "error"]  # fmt: skip
    return _table(header, rows)


def latency_table(results: Sequence[LatencyResult]) -> list[str]:
    peers = [r for r in results if r.contender.role is Role.PEER and r.missing == 0]
    best50 = _best([r.p50_ms for r in peers], min)
    best99 = _best([r.p99_ms for r in peers], min)
    rows = [
        [
            r.contender.label,
            f"{r.rate:g}/s",
            f"{r.measured:,}",
            num(r.p50_ms, 1),
            _ratio(r.p50_ms, best50),
            num(r.p99_ms, 1),
            _ratio(r.p99_ms, best99),
            num(r.max_ms, 1),
            num(r.cpu_pct, 0),
            f"{r.missing:,}",
        ]
        for r in results
    ]
    header = ["contender", "publish rate", "measured", "p50 ms", "÷ best peer", "p99 ms",
              "÷ best peer", "max ms", "CPU % of a core", "not accepted"]  # fmt: skip
    return _table(header, rows)


def pacing_table(results: Sequence[PacingResult]) -> list[str]:
    rows = []
    for r in results:
        cell = [
            r.worker,
            r.algorithm,
            str(r.workers),
            "yes" if r.bridge else "no",
            f"{r.limit} per {r.interval:g} s",
            f"{r.per_minute:g}",
        ]
        if not r.ran:
            rows.append([*cell, "–", "–", "–", "–", "–", "–", "–", r.error or ""])
            continue
        rows.append(
            [
                *cell,
                f"{r.seconds:g} s",
                f"{r.calls:,}",
                f"{r.accepted:,}",
                f"{100 * r.goodput_share:.1f} %",
                f"{100 * r.share_429:.1f} %",
                ", ".join(f"{k}: {v}" for k, v in sorted(r.statuses.items())),
                f"{r.dead_lettered:,}",
                r.error or "",
            ]
        )
    header = ["worker", "API counts by", "workers", "events bridge", "limit",
              "SCX_MAX_REQUESTS_PER_MINUTE (each)", "measured", "/v1/channel* calls",
              "answered 2xx", "goodput (share of limit)", "429 share", "statuses", "DLQ",
              "note"]  # fmt: skip
    return _table(header, rows)


def tables(results: Results) -> list[str]:
    out: list[str] = []
    if results.drain:
        out += ["### Drain rate and CPU per message", "", *drain_table(results.drain), ""]
    if results.rss:
        out += ["### Memory with a big backlog (0 ms API)", "", *rss_table(results.rss), ""]
    if results.latency:
        out += ["### Publish-to-accept latency at a steady rate (0 ms API)", ""]
        out += [*latency_table(results.latency), ""]
    if results.pacing:
        out += ["### Pacing against the emulator's rate limit", "", *pacing_table(results.pacing)]
        out += [""]
    if results.attachments:
        out += ["### Attachments: 16 MiB files through the worker", ""]
        out += [*attachments_table(results.attachments), ""]
    if results.events:
        out += ["### The events bridge draining a backlog under the rate limit", ""]
        out += [*events_table(results.events), ""]
    if results.categories:
        out += ["### Rate limits per route category: 2 workers and the bridge", ""]
        out += [*categories_table(results.categories), ""]
    return out


# --- the chart ------------------------------------------------------------------------


def chart(results: Results, path: Path) -> None:
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    # One colour per contender in every panel, in the order the contenders ran.
    order = [r.contender.label for r in results.drain]
    order += [r.contender.label for r in results.rss]
    order += [r.contender.label for r in results.latency]
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {label: palette[i % len(palette)] for i, label in enumerate(dict.fromkeys(order))}
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    (ax_rate, ax_cpu, ax_rss), (ax_lat, ax_pace, ax_note) = axes
    drain_api = [r for r in results.drain if r.contender.calls_api]
    latencies = sorted({r.latency_ms for r in drain_api})
    labels = list(dict.fromkeys(r.contender.label for r in drain_api))
    width = 0.8 / max(len(labels), 1)
    for k, label in enumerate(labels):
        xs = [i + k * width for i in range(len(latencies))]
        by_lat = {r.latency_ms: r for r in drain_api if r.contender.label == label}
        ax_rate.bar(xs, [by_lat[x].rate or 0 if x in by_lat else 0 for x in latencies],
                    width, label=label, color=colour[label])  # fmt: skip
        ax_cpu.bar(xs, [by_lat[x].cpu_ms or 0 if x in by_lat else 0 for x in latencies],
                   width, label=label, color=colour[label])  # fmt: skip
    ceiling = next((r for r in results.drain if r.contender.role is Role.CEILING), None)
    if ceiling is not None and ceiling.rate:
        ax_rate.axhline(ceiling.rate, color=colour[ceiling.contender.label], linestyle="--",
                        label=ceiling.contender.label)  # fmt: skip
    for ax, title in ((ax_rate, "drain rate, msg/s (log)"), (ax_cpu, "CPU ms per message")):
        ax.set_xticks([i + (len(labels) - 1) * width / 2 for i in range(len(latencies))])
        ax.set_xticklabels([f"API {x} ms" for x in latencies])
        ax.set_title(title)
    if drain_api:
        ax_rate.set_yscale("log")
        ax_rate.legend(fontsize=8)
    for r in results.rss:
        if r.series:
            ax_rss.plot([t for t, _ in r.series], [m for _, m in r.series],
                        label=r.contender.label, color=colour[r.contender.label])  # fmt: skip
    backlog = f", {results.rss[0].backlog:,}-message backlog" if results.rss else ""
    ax_rss.set_title(f"RSS MiB over time{backlog}")
    ax_rss.set_xlabel("seconds since process start")
    if results.rss:
        ax_rss.legend(fontsize=8)
    names = [r.contender.label for r in results.latency]
    xs = list(range(len(names)))
    ax_lat.bar([x - 0.2 for x in xs], [r.p50_ms or 0 for r in results.latency], 0.4, label="p50")
    ax_lat.bar([x + 0.2 for x in xs], [r.p99_ms or 0 for r in results.latency], 0.4, label="p99")
    ax_lat.set_xticks(xs)
    ax_lat.set_xticklabels(names, rotation=15, fontsize=8)
    ax_lat.set_title("publish-to-accept latency at a steady rate, ms (log)")
    if names:
        ax_lat.set_yscale("log")
        ax_lat.legend(fontsize=8)
    ran = [r for r in results.pacing if r.ran]
    pace = [_pacing_label(r) for r in ran]
    xs = list(range(len(pace)))
    ax_pace.bar([x - 0.2 for x in xs], [100 * r.goodput_share for r in ran], 0.4,
                label="goodput, % of limit")  # fmt: skip
    ax_pace.bar([x + 0.2 for x in xs], [100 * r.share_429 for r in ran], 0.4,
                label="429, % of calls")  # fmt: skip
    ax_pace.axhline(97, color="grey", linestyle=":", linewidth=1)
    ax_pace.set_xticks(xs)
    ax_pace.set_xticklabels(pace, fontsize=7)
    not_run = len(results.pacing) - len(ran)
    skipped = f" ({not_run} cells not run)" if not_run else ""
    before = ", before: --baseline" if any(r.worker != "current" for r in ran) else ""
    ax_pace.set_title(
        f"pacing: how the API counts x workers (+b: events bridge{before}), %{skipped}"
    )
    if pace:
        ax_pace.legend(fontsize=8)
    for ax, shown in ((ax_rate, drain_api), (ax_cpu, drain_api), (ax_rss, results.rss),
                      (ax_lat, names), (ax_pace, pace)):  # fmt: skip
        if not shown:
            ax.axis("off")
    ax_note.axis("off")
    ax_note.text(0, 1, _chart_note(results), va="top", fontsize=9, family="monospace", wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _pacing_label(r: PacingResult) -> str:
    label = f"{r.algorithm}\n{r.workers}w{'+b' if r.bridge else ''}\n{r.limit}/{r.interval:g}s"
    return label if r.worker == "current" else f"{label}\nbefore"


def _chart_note(results: Results) -> str:
    lines = ["CPU = the contender's own process", "(user+sys, all threads).", ""]
    if results.drain:
        lines.append("DLQ'd / failed runs are excluded")
        lines.append("from 'best peer'.")
    return "\n".join(lines)


# --- the document ---------------------------------------------------------------------


def document(results: Results, host: Machine, command: str, notes: Sequence[str]) -> str:
    when = host.started.strftime("%Y-%m-%d %H:%M UTC")
    load = " / ".join(f"{x:.2f}" for x in host.load_before)
    load_after = " / ".join(f"{x:.2f}" for x in host.load_after)
    parts = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`bench/run.py`); do not edit by hand, re-run it.",
        "",
        f"- command: `{command}`",
        f"- date: {when}, {host.seconds / 60:.1f} min",
        f"- machine: {host.cpu}, {host.cores} cores, {host.kernel}",
        f"- load average (1/5/15 min) before: {load}; after: {load_after}",
        f"- {host.python}; {host.broker}; {host.nginx}",
        f"- {host.packages}",
        *([f"- before: {results.baseline}"] if results.baseline else []),
        "",
        *notes,
        "",
        "![benchmark chart](benchmarks.png)",
        "",
        *tables(results),
    ]
    if results.profile:
        parts += ["### Profile of scx-forwarder at 0 ms", "", "```", results.profile, "```", ""]
    return "\n".join(parts)


def command_line() -> str:
    return " ".join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]])
