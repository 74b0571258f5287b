"""The project's emulator, keeping only size and SHA-256 of each uploaded file.

The attachments benchmark uploads 32 x 10 x 16 MiB: the emulator's file store would hold
5 GiB. This keeps everything else as is (every rule of the upload route is still checked, the
bytes are still read and hashed) and only drops the bytes once hashed.
Run as its own process: ``python bench/peers/digest_emulator.py PORT``.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from dataclasses import dataclass, field

from worker.emulator import app as emulator_app
from worker.emulator.files import FileStore, StoredFile


@dataclass(frozen=True)
class DigestFile(StoredFile):
    """A stored file without its bytes: size and SHA-256 taken when it arrived."""

    data: bytes = field(default=b"", repr=False)
    digest_size: int = 0
    digest_sha256: str = ""

    @property
    def size(self) -> int:
        return self.digest_size

    @property
    def sha256(self) -> str:
        return self.digest_sha256


class DigestStore(FileStore):
    def put(
        self, seller_id: str, ticket_id: str, filename: str, content_type: str, data: bytes
    ) -> StoredFile:
        stored = DigestFile(
            seller_id, ticket_id, filename, content_type, b"", len(data),
            hashlib.sha256(data).hexdigest(),
        )  # fmt: skip
        key = (seller_id, ticket_id, filename)
        self.files[key] = stored
        self.stores[key] += 1
        return stored


if __name__ == "__main__":
    # The emulator builds its store from the name in its module: this one is built instead.
    setattr(emulator_app, "FileStore", DigestStore)  # noqa: B010
    config = emulator_app.EmulatorConfig()
    asyncio.run(emulator_app.serve(config, "127.0.0.1", int(sys.argv[1])))
