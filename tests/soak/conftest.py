"""The soak runs on demand (``make soak``, or ``SOAK=1 pytest tests/soak``)."""

from __future__ import annotations

import os

collect_ignore_glob = [] if os.environ.get("SOAK") == "1" else ["test_*.py"]
