from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from worker.core.spool import MEMORY_THRESHOLD, TooLarge, clear_spool_dir, spool


async def _stream(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_spool_keeps_bytes_size_and_sha256(tmp_path: Path) -> None:
    data = [b"a" * 1000, b"b" * (MEMORY_THRESHOLD + 1)]
    spooled = await spool(_stream(*data), max_bytes=10**7, directory=tmp_path)
    try:
        assert b"".join(spooled.chunks()) == b"".join(data)
        assert spooled.size == sum(map(len, data))
        assert spooled.sha256 == hashlib.sha256(b"".join(data)).hexdigest()
    finally:
        spooled.close()
    assert os.listdir(tmp_path) == [], "closing removes the file"


async def test_spool_aborts_past_the_limit_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(TooLarge):
        await spool(
            _stream(b"x" * MEMORY_THRESHOLD, b"x" * MEMORY_THRESHOLD, b"x"),
            max_bytes=2 * MEMORY_THRESHOLD,
            directory=tmp_path,
        )
    assert os.listdir(tmp_path) == []


def test_clear_spool_dir_removes_leftovers(tmp_path: Path) -> None:
    (tmp_path / "left-by-a-crash").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f").write_bytes(b"y")
    assert clear_spool_dir(tmp_path) == 2
    assert os.listdir(tmp_path) == []
