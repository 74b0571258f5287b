"""The soak's short form in ``make test``: every part, every fault class once, reconciled.

Two minutes of traffic (10 ticket messages and 3 seller events a second) on the 3-node
cluster, which the run starts itself (and stops again if it was not running before), one
fault of each class with every fault held at most ``HOLD_CAP`` seconds (a node is stopped
and started again in about 15 s), then the same books as the long form (``make soak``). The
whole test takes about 4 minutes with the cluster running. A failure names every
discrepancy and the directory of the processes' logs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.soak.report import write_json
from tests.soak.runner import Soak, SoakConfig

MINUTES = float(os.environ.get("SOAK_SHORT_MINUTES", "2"))
HOLD_CAP = 4.0


@pytest.mark.timeout(900)
async def test_short_soak_loses_nothing_under_every_fault_class() -> None:
    """Soak, short form: every fault class once, nothing lost, duplicates within the bound."""
    soak = Soak(
        SoakConfig(
            seed=int(os.environ.get("SOAK_SEED", "1")),
            minutes=MINUTES,
            rate=10.0,
            seller_rate=3.0,
            settle_timeout=240.0,
            out_dir=Path("build/soak-short"),
            hold_cap=HOLD_CAP,
        )
    )
    result = await soak.run()
    write_json(result, soak.run_dir / "result.json")
    assert not result.fault_errors, result.fault_errors
    assert result.settled, f"did not settle: {result.books.summary()} (logs: {result.log_dir})"
    assert result.books.ok, f"{result.books.summary()} (logs: {result.log_dir})"
    by_class = {done.fault for done in result.faults}
    assert by_class == set(soak.config.classes), sorted(by_class)
