"""A py-spy profile of our worker draining a backlog at 0 ms API latency (``--profile``).

py-spy attaches to the running worker (pausing it for each of 200 samples a second: with
``--nonblocking`` close to half of the stacks came out truncated) and writes collapsed stacks
(``--format raw``); ``summarize`` turns them into the
top frames by own time and by cumulative time and the share of own time per package.
The profiled run is an extra run: its rate is not reported.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from pathlib import Path

from bench.contenders import WORKER
from bench.measure import Session, finish, start_and_sample
from bench.target import LogTail, NginxTarget
from worker.ops.samples import sample_lines

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


async def profile_worker(
    session: Session, target: NginxTarget, *, backlog: int, seconds: float, out: Path
) -> str:
    spy = py_spy()
    if spy is None:
        return "py-spy is not installed (pip install py-spy, or '.[bench]')"
    settings = await session.broker.new_queue()
    await session.broker.publish_backlog(settings, list(sample_lines(backlog)))
    tail = LogTail(target.accept_log(0))
    env = WORKER.env(settings, target.url(0))
    run, proc = await start_and_sample(
        session, WORKER, settings, env, tail=tail, expected=backlog, cap=60, interval=0.05,
        until_consuming=True,
    )  # fmt: skip
    try:
        recorder = await session.children.start(
            [spy, "record", "--pid", str(proc.pid), "--rate", "200",
             "--format", "raw", "--output", str(out), "--duration", f"{seconds:.0f}"],
            log=session.workdir / "py-spy.log",
        )  # fmt: skip
        await recorder.wait()
    finally:
        await finish(session, run, proc, settings, tail)
    return _summary(out, session.workdir / "py-spy.log")


def _summary(out: Path, log: Path) -> str:
    if not out.exists():
        return "py-spy wrote nothing:\n" + (log.read_text()[-1000:] if log.exists() else "")
    return summarize(out.read_text(), top=25)


def _short(frame: str) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return (
        f"{match['func']} ({path}:{match['line']})"
        if match["line"]
        else f"{match['func']} ({path})"
    )


def _package(frame: str) -> str:
    """The top-level package of a frame (py-spy shows paths relative to sys.path)."""
    match = FRAME.match(frame)
    path = match["file"] if match else frame
    if path.startswith("<frozen "):
        return path.removeprefix("<frozen ").split(".")[0].rstrip(">") + " (frozen)"
    for marker in ("site-packages/", "/lib/python3.11/"):
        path = path.split(marker, 1)[-1]
    top = path.lstrip("/").split("/", 1)[0].removesuffix(".py")
    return "worker (ours)" if top == "worker" else top


def summarize(raw: str, top: int = 25) -> str:
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # Drop the line numbers for cumulative time, so a function counts once per stack.
        frames = [_short(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        packages[_package(stack.split(";")[-1])] += count
        for name in {re.sub(r":\d+\)$", ")", f) for f in frames}:
            cumulative[name] += count
    if not total:
        return "no samples"

    def block(title: str, counter: Counter[str], n: int) -> list[str]:
        rows = [f"{title} (of {total} samples)"]
        rows += [f"  {100 * c / total:5.1f} %  {name}" for name, c in counter.most_common(n)]
        return rows

    lines = block("own time by package", packages, 15)
    lines += ["", *block("own time by frame", own, top)]
    lines += ["", *block("cumulative time by function", cumulative, top)]
    return "\n".join(lines)
