"""``python -m tests.soak --minutes 60 --seed 1 --report``: the long form (``make soak``).

Writes ``build/soak/<run>/result.json`` and the processes' logs; with ``--report`` also a
section of docs/RELIABILITY.md and the chart docs/soak.png. Exits 0 when the books
reconcile, 1 when they do not.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import structlog

from tests.soak import faults
from tests.soak.report import append_section, chart, write_json
from tests.soak.runner import Soak, SoakConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=30.0, help="ticket messages per second")
    parser.add_argument("--seller-rate", type=float, default=5.0, help="seller events per second")
    parser.add_argument("--per-hour", type=float, default=6.0, help="faults per class per hour")
    parser.add_argument("--faults", default=",".join(faults.CLASSES), help="classes, by name")
    parser.add_argument("--settle-timeout", type=float, default=900.0)
    parser.add_argument(
        "--hold-cap", type=float, default=None, help="the longest any fault lasts, seconds"
    )
    parser.add_argument("--report", action="store_true", help="write docs/RELIABILITY.md")
    parser.add_argument("--out", type=Path, default=Path("build/soak"))
    args = parser.parse_args(argv)
    classes = tuple(c.strip() for c in args.faults.split(",") if c.strip())
    unknown = set(classes) - set(faults.CLASSES)
    if unknown:
        parser.error(f"unknown fault classes: {', '.join(sorted(unknown))}")
    structlog.configure(
        processors=[
            structlog.processors.TimeStamper("iso"),
            structlog.dev.ConsoleRenderer(colors=False),
        ]
    )
    config = SoakConfig(
        seed=args.seed,
        minutes=args.minutes,
        rate=args.rate,
        seller_rate=args.seller_rate,
        classes=classes,
        per_hour=args.per_hour,
        settle_timeout=args.settle_timeout,
        out_dir=args.out,
        hold_cap=args.hold_cap,
    )
    soak = Soak(config)
    result = asyncio.run(soak.run())
    write_json(result, soak.run_dir / "result.json")
    picture = None
    if args.report:
        chart(result, Path("docs/soak.png"))
        picture = "soak.png"
        append_section(result, Path("docs/RELIABILITY.md"), picture)
    else:
        chart(result, soak.run_dir / "soak.png")
    print(f"soak {'passed' if result.passed else 'FAILED'}: {soak.run_dir}/result.json")
    if not result.passed:
        print(result.books.summary(), file=sys.stderr)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
