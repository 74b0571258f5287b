"""Valid ticket events as a marketplace publishes them, one per index."""

from __future__ import annotations

import random
from typing import Any

import orjson

from worker.ops.samples import valid_event


def event(index: int, **data: Any) -> bytes:
    body = valid_event(index, random.Random(index))
    body["data"].update(data)
    return orjson.dumps(body)
