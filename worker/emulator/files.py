"""The emulator's attachment files: what uploads stored and downloads serve.

Kept whole in memory: the emulator holds test and demo files, not production volumes.
Every upload of a key is counted, so tests can tell a duplicate upload from a single one.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

FileKey = tuple[str, str, str]  # (sellerId, ticketId, filename)


@dataclass(frozen=True)
class StoredFile:
    seller_id: str
    ticket_id: str
    filename: str
    content_type: str
    data: bytes = field(repr=False)

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "sellerId": self.seller_id,
            "ticketId": self.ticket_id,
            "filename": self.filename,
            "contentType": self.content_type,
            "size": self.size,
            "sha256": self.sha256,
        }


@dataclass
class FileStore:
    files: dict[FileKey, StoredFile] = field(default_factory=dict)
    # Stores per key: 2 or more is a file the client uploaded again.
    stores: Counter[FileKey] = field(default_factory=Counter)
    conflicts: int = 0
    """Uploads of a stored key answered 409 (``conflict_on_existing_file``)."""

    def put(
        self, seller_id: str, ticket_id: str, filename: str, content_type: str, data: bytes
    ) -> StoredFile:
        stored = StoredFile(seller_id, ticket_id, filename, content_type, data)
        key = (seller_id, ticket_id, filename)
        self.files[key] = stored
        self.stores[key] += 1
        return stored

    def get(self, seller_id: str, ticket_id: str, filename: str) -> StoredFile | None:
        return self.files.get((seller_id, ticket_id, filename))

    @property
    def duplicates(self) -> int:
        """Stores beyond the first of each key."""
        return sum(n - 1 for n in self.stores.values())

    def clear(self) -> None:
        self.files.clear()
        self.stores.clear()
        self.conflicts = 0

    def to_json(self) -> list[dict[str, Any]]:
        return [
            stored.to_json() | {"stores": self.stores[key]} for key, stored in self.files.items()
        ]
