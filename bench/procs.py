"""Child processes of the harness: start, sample from /proc, stop; never leave one behind.

Every child gets its own session (``start_new_session``), so a Ctrl-C in the terminal reaches
the harness only, and the harness ends its children itself, by pid: SIGTERM, then SIGKILL
after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Usage:
    cpu_s: float
    """user + system CPU seconds of every thread so far (10 ms resolution)."""
    rss_bytes: int


def usage(pid: int) -> Usage | None:
    """CPU time and resident memory of a running process; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return Usage(cpu, int(statm.split()[1]) * PAGE_SIZE)


def find_pid(comm: str) -> int | None:
    """The first process whose name is ``comm`` (the broker's ``beam.smp``), if any."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == comm:
                    return int(entry.name)
    return None


class Children:
    """The processes this harness started; ``stop_all`` ends whatever is left."""

    def __init__(self) -> None:
        self._procs: dict[int, asyncio.subprocess.Process] = {}

    async def start(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        log: Path | None = None,
        user: str | None = None,
        group: str | None = None,
    ) -> asyncio.subprocess.Process:
        out = log.open("ab") if log is not None else None
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env=dict(env) if env is not None else None,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out if out is not None else asyncio.subprocess.DEVNULL,
                stderr=out if out is not None else asyncio.subprocess.DEVNULL,
                start_new_session=True,
                user=user,
                group=group,
            )
        finally:
            if out is not None:
                out.close()
        self._procs[proc.pid] = proc
        return proc

    async def stop(self, proc: asyncio.subprocess.Process, grace: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; returns the exit code."""
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        self._procs.pop(proc.pid, None)
        return proc.returncode

    async def stop_all(self) -> None:
        procs = list(self._procs.values())
        await asyncio.gather(*(self.stop(p, grace=5.0) for p in procs), return_exceptions=True)

    def kill_remaining(self) -> None:
        """Last resort outside the event loop (a second Ctrl-C): SIGKILL what is left."""
        for pid, proc in list(self._procs.items()):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._procs.clear()
