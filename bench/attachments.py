"""Attachments: memory and time of the worker moving big files, against pure transfer.

32 tickets with 10 attachments of 16 MiB each (the API's maximum), given as URL sources:

- a file server process (``peers/file_server.py``) serves 10 distinct random files of
  16 MiB from disk, ``image/png``;
- the project's emulator runs as its own process (``peers/digest_emulator.py``: every rule of
  the upload route checked, each file hashed on arrival and only its size and SHA-256 kept);
- ``scx-forwarder run`` with its defaults (``WORKER_ATTACHMENT_CONCURRENCY`` included),
  ``ATTACHMENT_ALLOWED_URLS`` set to the file server, consumes an empty queue; the 32 events
  are published at once; the run ends when the emulator holds all 320 files.

Measured: the time from publishing to the last file stored, and the worker's CPU time
(user + system) meanwhile, and the emulator's (it parses and hashes every upload); the
worker's peak RSS
(``VmHWM`` of ``/proc/<pid>/status``, the kernel's own high-water mark, read before the
worker is stopped) and its RSS before the first message; every stored file's SHA-256
against the source's, duplicates, dead-letters. The baseline (``peers/transfer.py``) moves
the same bytes over the same two loopback legs with as many streams as the worker handles
messages at once, without broker, API, disk or checks.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from bench.contenders import PEERS_DIR, WORKER
from bench.measure import Session
from bench.procs import usage
from bench.target import free_port
from worker.core.settings import MAX_ATTACHMENT_BYTES, Settings

MiB = 1024 * 1024
TICKETS = 32
FILES = 10
FILE_BYTES = MAX_ATTACHMENT_BYTES
RSS_LIMIT_MB = 150.0


@dataclass
class AttachmentsResult:
    tickets: int
    files_per_ticket: int
    file_bytes: int
    concurrency: int
    seconds: float | None = None
    transfer_seconds: float | None = None
    start_rss_mb: float | None = None
    peak_rss_mb: float | None = None
    worker_cpu_s: float | None = None
    emulator_cpu_s: float | None = None
    stored: int = 0
    verified: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    error: str | None = None

    @property
    def total_bytes(self) -> int:
        return self.tickets * self.files_per_ticket * self.file_bytes

    @property
    def ratio(self) -> float | None:
        if self.seconds is None or not self.transfer_seconds:
            return None
        return self.seconds / self.transfer_seconds


async def attachments(
    session: Session, *, tickets: int = TICKETS, files: int = FILES, file_bytes: int = FILE_BYTES
) -> AttachmentsResult:
    concurrency = Settings().worker_attachment_concurrency
    result = AttachmentsResult(tickets, files, file_bytes, concurrency)
    root = session.workdir / "files"
    names, digests = _make_files(root, files, file_bytes)
    file_port, api_port = free_port(), free_port()
    files_url = f"http://127.0.0.1:{file_port}/files"
    api_url = f"http://127.0.0.1:{api_port}"
    children = session.children
    server = await children.start(
        [sys.executable, str(PEERS_DIR / "file_server.py"), str(root), str(file_port)],
        log=session.workdir / "file_server.log",
    )
    emulator = await children.start(
        [sys.executable, str(PEERS_DIR / "digest_emulator.py"), str(api_port)],
        log=session.workdir / "emulator-attachments.log",
    )
    http = httpx.AsyncClient(timeout=30)
    try:
        await _until_up(http, f"{files_url}/{names[0]}", "GET")
        await _until_up(http, f"{api_url}/_emulator/state?bodies=0", "GET")
        result.transfer_seconds = await _transfer(
            files_url, f"http://127.0.0.1:{file_port}/sink", tickets, names, concurrency
        )
        api_cpu = usage(emulator.pid)
        await _run_worker(session, http, result, api_url, files_url, names, digests)
        api_cpu_after = usage(emulator.pid)
        if api_cpu is not None and api_cpu_after is not None:
            result.emulator_cpu_s = api_cpu_after.cpu_s - api_cpu.cpu_s
    except Exception as exc:
        result.error = result.error or f"{type(exc).__name__}: {exc}"
    finally:
        await http.aclose()
        await children.stop(emulator)
        await children.stop(server)
    return result


def _make_files(root: Path, count: int, size: int) -> tuple[list[str], dict[str, str]]:
    """``count`` random files of ``size`` bytes: their names and SHA-256 by upload name."""
    root.mkdir(exist_ok=True)
    names, digests = [], {}
    for i in range(count):
        data = os.urandom(size)
        name = f"photo_{i}.png"
        (root / name).write_bytes(data)
        names.append(name)
        digests[name] = hashlib.sha256(data).hexdigest()
    return names, digests


def _events(files_url: str, names: list[str], tickets: int) -> list[bytes]:
    bodies = []
    for t in range(tickets):
        data = {
            "seller_id": "4711",
            "ticket_id": f"BENCH-ATT-{t}",
            "topic": "question",
            "created_at": "2026-11-30T12:00:00Z",
            "author": {"role": "buyer", "name": "Dave"},
            "subject": "Photos of the damage",
            "message": "Ten photos attached.",
            # "photo 3.png" is uploaded as photo_3.png: the name is sanitised on the way.
            "attachments": [_attachment(files_url, name) for name in names],
        }
        bodies.append(orjson.dumps({"type": "ticket.created", "data": data}))
    return bodies


def _attachment(files_url: str, name: str) -> dict[str, str]:
    return {
        "filename": name.replace("_", " "),
        "content_type": "image/png",
        "url": f"{files_url}/{name}?X-Amz-Signature=bench",
    }


async def _run_worker(
    session: Session,
    http: httpx.AsyncClient,
    result: AttachmentsResult,
    api_url: str,
    files_url: str,
    names: list[str],
    digests: dict[str, str],
) -> None:
    settings = await session.broker.new_queue()
    env = WORKER.env(
        settings, api_url, ATTACHMENT_ALLOWED_URLS=files_url + "/", LOG_LEVEL="WARNING"
    )
    proc = await session.children.start(
        WORKER.argv, env, log=session.workdir / "worker-attachments.log"
    )
    expected = result.tickets * result.files_per_ticket
    try:
        deadline = time.monotonic() + 60
        while (await session.broker.depth(settings.amqp_queue))[1] == 0:
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError("the worker did not start consuming (worker-attachments.log)")
            await asyncio.sleep(0.05)
        result.start_rss_mb = _status_mb(proc.pid, "VmRSS")
        before = usage(proc.pid)
        started = time.monotonic()
        for i, body in enumerate(_events(files_url, names, result.tickets)):
            await session.broker.publish(settings, body, f"bench-att-{i}")
        limit = time.monotonic() + 900
        while True:
            state = (await http.get(f"{api_url}/_emulator/state?bodies=0")).json()
            if len(state["files"]) >= expected:
                result.seconds = time.monotonic() - started
                break
            dead = (await session.broker.depth(settings.dead_letter_queue))[0]
            if proc.returncode is not None or dead or time.monotonic() > limit:
                result.error = f"stopped: {len(state['files'])} of {expected} files stored"
                break
            await asyncio.sleep(0.1)
        result.peak_rss_mb = _status_mb(proc.pid, "VmHWM")
        after = usage(proc.pid)
        if before is not None and after is not None:
            result.worker_cpu_s = after.cpu_s - before.cpu_s
        state = (await http.get(f"{api_url}/_emulator/state?bodies=0")).json()
        result.stored = len(state["files"])
        result.verified = sum(
            1 for f in state["files"] if digests.get(f["filename"]) == f["sha256"]
        )
        result.duplicates = sum(f["stores"] - 1 for f in state["files"])
    finally:
        await session.children.stop(proc, grace=30.0)
        try:
            result.dead_lettered = (await session.broker.depth(settings.dead_letter_queue))[0]
        finally:
            await session.broker.delete(settings)


async def _transfer(
    files_url: str, sink: str, tickets: int, names: list[str], streams: int
) -> float:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(PEERS_DIR / "transfer.py"), files_url, sink, str(tickets),
        ",".join(names), str(streams), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the transfer baseline failed with code {proc.returncode}")
    seconds: float = orjson.loads(out)["seconds"]
    return seconds


async def _until_up(http: httpx.AsyncClient, url: str, method: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            (await http.request(method, url)).raise_for_status()
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up") from None
            await asyncio.sleep(0.1)


def _status_mb(pid: int, key: str) -> float | None:
    """A ``VmRSS``/``VmHWM`` line of ``/proc/<pid>/status`` in MB (10^6 bytes)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        return None
    return None


def table(results: list[AttachmentsResult]) -> list[str]:
    """The benchmark's row(s) in Markdown."""
    out = [
        "| tickets x files x size | concurrency | worker time | pure transfer | ÷ transfer "
        "| worker CPU | emulator CPU | peak RSS (limit 150 MB) | RSS at start | verified "
        "| duplicates | DLQ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        size = f"{r.tickets} x {r.files_per_ticket} x {r.file_bytes / MiB:g} MiB"
        gib = r.total_bytes / 1024**3
        worker = f"{r.seconds:.1f} s" if r.seconds is not None else "–"
        transfer = f"{r.transfer_seconds:.1f} s" if r.transfer_seconds is not None else "–"
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "–"
        peak = f"{r.peak_rss_mb:.1f} MB" if r.peak_rss_mb is not None else "–"
        if r.peak_rss_mb is not None:
            peak += " ✓" if r.peak_rss_mb <= RSS_LIMIT_MB else " ✗"
        start = f"{r.start_rss_mb:.1f} MB" if r.start_rss_mb is not None else "–"
        cpu = f"{r.worker_cpu_s:.1f} s" if r.worker_cpu_s is not None else "–"
        api_cpu = f"{r.emulator_cpu_s:.1f} s" if r.emulator_cpu_s is not None else "–"
        out.append(
            f"| {size} ({gib:.1f} GiB) | {r.concurrency} | {worker} | {transfer} | {ratio} "
            f"| {cpu} | {api_cpu} | {peak} | {start} | {r.verified}/{r.stored} | {r.duplicates} "
            f"| {r.dead_lettered} |"
        )
        if r.error:
            out.append(f"\nerror: {r.error}")
    return out
