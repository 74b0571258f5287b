"""How ``scx-forwarder dlq`` shows what it found: tables for people, JSON for scripts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from worker.ops.dlq import Entry, KindStats


def format_stats(queue: str, by_kind: dict[str, KindStats], now: datetime) -> str:
    total = sum(s.count for s in by_kind.values())
    lines = [f"{queue}: {total} message{'' if total == 1 else 's'}"]
    if by_kind:
        lines.append(f"{'kind':<16} {'count':>7}  {'oldest':<30} newest")
        for kind, s in sorted(by_kind.items(), key=lambda item: -item[1].count):
            lines.append(
                f"{kind:<16} {s.count:>7}  {_when(s.oldest, now):<30} {_when(s.newest, now)}"
            )
    return "\n".join(lines)


def stats_json(by_kind: dict[str, KindStats]) -> dict[str, Any]:
    return {
        "total": sum(s.count for s in by_kind.values()),
        "kinds": {
            kind: {
                "count": s.count,
                "oldest": _iso(s.oldest),
                "newest": _iso(s.newest),
            }
            for kind, s in by_kind.items()
        },
    }


def format_table(entries: list[Entry], now: datetime, width: int = 120) -> str:
    """A readable table: message id, ticket id, kind, age, error (cut to fit ``width``)."""
    header = ("message id", "ticket id", "kind", "age", "error")
    rows = [
        (
            e.message_id or "-",
            e.ticket_id or "-",
            e.kind,
            _age(e.age(now)),
            e.reason,
        )
        for e in entries
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    widths = [min(w, 36) for w in widths]
    room = max(20, width - sum(widths) - 2 * 4)
    lines = []
    for row in [header, *rows]:
        cells = [_cut(row[i], widths[i]).ljust(widths[i]) for i in range(4)]
        lines.append("  ".join([*cells, _cut(row[4], room)]).rstrip())
    return "\n".join(lines)


def entry_json(entry: Entry, now: datetime) -> dict[str, Any]:
    return {
        "message_id": entry.message_id,
        "ticket_id": entry.ticket_id,
        "kind": entry.kind,
        "reason": entry.reason,
        "dead_lettered_at": _iso(entry.dead_lettered_at),
        "age_s": entry.age(now),
        "replay_count": entry.replay_count,
    }


def _when(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    age = _age(max(0.0, (now - moment).total_seconds()))
    return f"{moment.isoformat(timespec='seconds')} ({age} ago)"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
