"""What a fresh interpreter imports: the modules a worker process would carry."""

from __future__ import annotations

import ast
import subprocess
import sys


def modules_loaded(code: str, prefix: str) -> list[str]:
    """The modules starting with ``prefix`` that a fresh interpreter holds after ``code``: what
    a worker process would carry (an import in this process cannot be taken back)."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in sys.modules if m.startswith({prefix!r})))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    loaded: list[str] = ast.literal_eval(done.stdout.strip())
    return loaded
