"""Files on their way through the worker: streamed to disk, never held whole in memory.

``spool`` copies a byte stream into a ``SpooledTemporaryFile`` (in memory up to
``MEMORY_THRESHOLD``, then a file in the worker's own temporary directory), counting its size
and SHA-256 as it goes and aborting with ``TooLarge`` as soon as it passes ``max_bytes``, so a
source that lies about its size (or declares none) costs at most ``max_bytes`` of disk.

``spool_dir`` is one directory per process kind below the system's temporary directory;
``clear_spool_dir`` empties it at start, removing what a crashed run left behind.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

# Files up to this size stay in memory; larger ones roll over to disk.
MEMORY_THRESHOLD = 256 * 1024
# Reading back for an upload: one chunk at a time.
CHUNK_SIZE = 64 * 1024


class TooLarge(Exception):
    """The stream passed ``max_bytes``; what was read so far has been discarded."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"larger than {max_bytes} bytes")
        self.max_bytes = max_bytes


@dataclass
class Spooled:
    """A file read to its end: its bytes (rewound), size and SHA-256."""

    file: IO[bytes] = field(repr=False)
    size: int
    sha256: str

    def chunks(self) -> Iterator[bytes]:
        """The bytes from the start, ``CHUNK_SIZE`` at a time."""
        self.file.seek(0)
        while chunk := self.file.read(CHUNK_SIZE):
            yield chunk

    def close(self) -> None:
        self.file.close()


def spool_dir(name: str) -> Path:
    """This process kind's own temporary directory (created if missing)."""
    path = Path(tempfile.gettempdir()) / f"scx-forwarder-{name}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def clear_spool_dir(path: Path) -> int:
    """Remove everything in ``path`` (left by a crash); returns how many entries went."""
    removed = 0
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    return removed


async def spool(chunks: AsyncIterator[bytes], *, max_bytes: int, directory: Path) -> Spooled:
    """Copy ``chunks`` into a spooled temporary file; ``TooLarge`` past ``max_bytes``."""
    # Past the threshold the bytes go to an unnamed file (O_TMPFILE where the OS has it), so
    # even a kill -9 leaves nothing behind on most systems; clear_spool_dir catches the rest.
    file = tempfile.SpooledTemporaryFile(  # noqa: SIM115 (returned open, closed by the caller)
        max_size=MEMORY_THRESHOLD, mode="w+b", dir=str(directory)
    )
    digest = hashlib.sha256()
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge(max_bytes)
            digest.update(chunk)
            file.write(chunk)
    except BaseException:
        file.close()
        raise
    file.seek(0)
    return Spooled(file, size, digest.hexdigest())
