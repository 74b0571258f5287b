"""``python -m bench --baseline REF``: the earlier worker is really the one its rows measure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.baseline import BaselineUnavailable, extract
from bench.contenders import WORKER
from bench.pacing import PacingResult
from bench.report import pacing_table
from worker.core.settings import Settings

REPO = Path(__file__).resolve().parent.parent
# Each contender gets a free port of its own; the rest must be the same for both.
OWN = ("METRICS_PORT", "PYTHONPATH", "PYTHONSAFEPATH")

pytestmark = pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout")


def test_the_extracted_package_is_the_one_python_m_worker_imports(tmp_path: Path) -> None:
    baseline = extract("HEAD", REPO, tmp_path)
    before = baseline.contender
    assert before.source is not None
    assert before.label == f"scx-forwarder before ({baseline.commit[:7]})"
    assert before.argv == WORKER.argv
    env = before.env(Settings(amqp_queue="bench.q"), "http://127.0.0.1:1")
    # From this checkout's directory, as the harness runs it: -m would put it first.
    loaded = subprocess.run(
        [sys.executable, "-c", "import worker; print(worker.__file__)"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(loaded).is_relative_to(before.source)


def test_it_runs_with_the_current_rows_environment(tmp_path: Path) -> None:
    before = extract("HEAD", REPO, tmp_path).contender
    settings = Settings(amqp_queue="bench.q")
    mine = before.env(settings, "http://127.0.0.1:1")
    current = WORKER.env(settings, "http://127.0.0.1:1")
    assert {k: v for k, v in mine.items() if k not in OWN} == {
        k: v for k, v in current.items() if k not in OWN
    }
    assert WORKER.checkout_env() == {}


def test_a_ref_that_does_not_resolve_is_a_reason_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(BaselineUnavailable, match="is not a commit"):
        extract("no-such-ref-anywhere", REPO, tmp_path)
    assert not any(tmp_path.iterdir())


def test_the_pacing_table_says_which_worker_ran_a_cell() -> None:
    cell = PacingResult(
        "before (0ce5a92)", "fixed", 1, False, 10, 5.0, 120.0, 10.0, 20, 20, {"ticket 201": 20}, 0
    )
    header, _, row = pacing_table([cell])
    assert header.startswith("| worker | API counts by |")
    assert row.startswith("| before (0ce5a92) | fixed | 1 | no |")
