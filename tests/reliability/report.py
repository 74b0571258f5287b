"""Render the reliability suite's results file into ``docs/RELIABILITY.md``.

    python -m tests.reliability.report RESULTS.json docs/RELIABILITY.md

``make reliability`` runs the suite with ``RELIABILITY_REPORT=RESULTS.json`` and then this.

The page is not this module's alone: sections written by hand or by other runs follow the
generated part (the conversations scenario, ``make soak``'s "Soak runs"). The generated part
is the header, the table and ``## Per scenario``; every ``## `` section after it in the
existing page is kept, in order, after the newly rendered part (``page``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

COMMAND = "make reliability"

# (figure key, column heading); a scenario without the figure shows "–".
COLUMNS = [
    ("published", "events"),
    ("lost", "lost"),
    ("duplicated", "duplicated"),
    ("dead_lettered", "dead-lettered"),
    ("requests_during_outage", "requests during outage"),
    ("recovery_s", "time to recover (s)"),
    ("auth_calls", "auth calls"),
    ("goodput_per_s", "goodput (tickets/s)"),
    ("goodput_of_limit", "goodput / rate limit"),
    ("share_429", "429 share"),
    ("duration_s", "duration (s)"),
]

# Scenarios in the order of the document, by test name; others follow in file order.
ORDER = [
    "test_worker_sigkilled_mid_backlog",
    "test_the_one_node_the_worker_knows_restarted_mid_backlog",
    "test_connection_lost_with_acks_in_transit",
    "test_node_of_the_worker_stopped_mid_backlog",
    "test_leader_of_the_work_queue_stopped_mid_backlog",
    "test_node_of_the_worker_killed_mid_backlog",
    "test_node_of_the_events_bridge_stopped_mid_backlog",
    "test_api_outage_of_30_s",
    "test_429_storm_with_retry_after",
    "test_token_lifetime_of_2_s_over_a_minute",
    "test_rate_limit_shared_by_three_workers",
    "test_sigterm_at_100ms_latency_finishes_in_flight_work",
    "test_arbitrary_bodies_never_crash_the_worker",
]

LEGEND = """
*events*: published, 2 % of them bad. *lost*: neither accepted nor dead-lettered.
*duplicated*: extra acceptances of a ticket id, plus extra dead-letter copies of one body.
*dead-lettered*: copies in the DLQ (the bad events, nothing else). *requests during outage*:
ticket and auth calls that reached the API while it was down (or storming). *time to
recover*: from the end of the fault (outage, storm, broker back up) to the next accepted
ticket; for a lost connection or cluster node, from the loss until more tickets were accepted
than the worker could have held (`AMQP_PREFETCH`), i.e. until forwarding had resumed.
*goodput*: tickets accepted per second from the first worker's start to the last outcome.
*goodput / rate limit*: tickets accepted per window over the limit, over 10 windows. *429
share*: 429 answers among all ticket calls. *duration*: first worker's start to the last
outcome.
"""

HEADER = """\
# Reliability

What the worker does when things break, measured by the fault-injection suite in
`tests/reliability/` (issue 3). Every scenario publishes a backlog of at least 2,000 events
through the worker's own topology (2 % of them malformed or invalid), runs the worker as real
`scx-forwarder run` processes against the real RabbitMQ and the bundled emulator, injects its
fault, and then reconciles the books: every valid event must have been accepted by the emulator
(by ticket id; a count above 1 is a duplicate), every invalid one must be in the dead-letter
queue with the right `x-error-kind`, and nothing may be left in the work queue or its delay
queues. The suite runs with `make test` too; this page is the record of one run.

The cluster scenarios run on a local 3-node RabbitMQ cluster (`scripts/cluster.sh`, quorum
queues replicated on all three nodes) and stop one node under a backlog of 3,000 events: the
node the worker is connected to, or the node leading the work queue. The broker restart is
played by that cluster too: node 2, the only node in the worker's `AMQP_URL`, is stopped and
started again (the machine's own broker is never stopped). Duplicates are bounded by
`AMQP_PREFETCH` per lost connection: every delivery the connection held unacked, including
those already sent to the API whose ack was still on the way (README "What it promises").

Time is scaled down with settings, not waited out: delay queues of 1, 2 and 4 s, a breaker
cool-down of 1 s, a rate-limit window of 6 s instead of 60 s, tokens that live 2 s.
"""


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _share(value: Any) -> str:
    return "–" if value is None else f"{value:.1%}"


def render(results: dict[str, Any]) -> str:
    run = results.get("run", {})
    scenarios: dict[str, Any] = results.get("scenarios", {})
    names = [n for n in ORDER if n in scenarios] + [n for n in scenarios if n not in ORDER]
    lines = [HEADER]
    lines.append(
        f"Run {run.get('started', '?')} on {run.get('machine', '?')} ({run.get('os', '?')}), "
        f"Python {run.get('python', '?')}, RabbitMQ {run.get('rabbitmq', '?')}. "
        f"Reproduce with `{COMMAND}`.\n"
    )
    heads = ["scenario", "result", *(title for _, title in COLUMNS)]
    lines.append("| " + " | ".join(heads) + " |")
    lines.append("|" + "---|" * len(heads))
    for name in names:
        scenario = scenarios[name]
        figures = scenario.get("figures", {})
        cells = [scenario.get("title", name), "pass" if scenario.get("passed") else "**FAIL**"]
        for key, _ in COLUMNS:
            value = figures.get(key)
            percent = key in ("share_429", "goodput_of_limit")
            cells.append(_share(value) if percent else _cell(value))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(LEGEND)
    lines.append("## Per scenario\n")
    for name in names:
        scenario = scenarios[name]
        verdict = "passed" if scenario.get("passed") else "FAILED"
        lines.append(f"### {scenario.get('title', name)}\n")
        lines.append(f"`tests/reliability` `{name}`: {verdict} in {scenario.get('wall_s')} s.\n")
        if scenario.get("error"):
            lines.append(f"Failure: `{scenario['error']}`\n")
        bounds = scenario.get("bounds") or {}
        if bounds:
            lines.append("Asserted: " + "; ".join(f"{k} {v}" for k, v in bounds.items()) + ".\n")
        figures = scenario.get("figures") or {}
        if figures:
            shown = ", ".join(f"{k} = {_figure(v)}" for k, v in figures.items())
            lines.append(f"Figures: {shown}.\n")
    return "\n".join(lines)


GENERATED_LAST = "## Per scenario"


def kept_sections(existing: str) -> str:
    """The sections of ``existing`` that follow its generated part ("" if there are none).

    Everything from the first ``## `` heading after ``## Per scenario`` on; headings inside
    fenced code blocks do not count. A page without the generated part keeps nothing (it is
    not this module's page).
    """
    lines = existing.splitlines(keepends=True)
    generated = fenced = False
    for index, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        if line.rstrip() == GENERATED_LAST:
            generated = True
        elif generated and line.startswith("## "):
            return "".join(lines[index:])
    return ""


def page(results: dict[str, Any], existing: str = "") -> str:
    """The whole page: ``render(results)``, then what ``existing`` has after its generated part."""
    rendered = render(results).rstrip("\n") + "\n"
    kept = kept_sections(existing)
    return rendered + ("\n" + kept if kept else "")


def _figure(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return str(value)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    results = orjson.loads(Path(argv[0]).read_bytes())
    target = Path(argv[1])
    target.parent.mkdir(parents=True, exist_ok=True)
    existing = target.read_text(encoding="utf-8") if target.exists() else ""
    target.write_text(page(results, existing), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
