"""Pacing by invariants over an injected clock, not pinned timestamps.

The simulation (``tests/support/pacing_sim.py``) drives the pacer's pure core against the emulator's
limiters with a virtual clock. Whatever the counting model and however it is chosen (learned,
``SCX_RATE_COUNTING=auto``, or named by the user), the calls that reach the API never exceed
the limit in any window *of that model*, and the calls admitted stay above a bound.
"""

from __future__ import annotations

import inspect
import itertools

import pytest

from tests.support.pacing_sim import Outcome, simulate
from worker.emulator.limits import Algorithm
from worker.scx.pacing import TUNING, Schedule, Tuning
from worker.scx.responses import RateLimit

LIMIT, INTERVAL = 20, 10.0
GOODPUT = 0.95  # of what the limit sustains over the run


def most_in_any_window(algorithm: Algorithm, arrivals: list[float]) -> float:
    """The most calls beyond the model's allowance in any of its windows (<= 0: within)."""
    times = sorted(arrivals)
    if algorithm == "fixed":
        # A window opens with the first call after the previous one ended (as the limiter).
        worst, start, count = 0.0, None, 0
        for t in times:
            if start is None or t >= start + INTERVAL:
                start, count = t, 0
            count += 1
            worst = max(worst, count - LIMIT)
        return worst
    if algorithm == "sliding":
        return max(
            (sum(1 for u in times if t - INTERVAL < u <= t) - LIMIT for t in times), default=0
        )
    # A token bucket: from any moment to any later one, a full bucket plus the refill.
    rate = LIMIT / INTERVAL
    return max(
        (j - i + 1 - (LIMIT + (times[j] - times[i]) * rate) for i, j in _pairs(len(times))),
        default=0.0,
    )


def _pairs(n: int) -> itertools.combinations[tuple[int, ...]]:
    return itertools.combinations(range(n), 2)


def run(algorithm: Algorithm, counting: str, replicas: int, seed: int) -> Outcome:
    return simulate(
        algorithm,
        LIMIT,
        INTERVAL,
        replicas,
        seconds=60,
        seed=seed,
        counting=counting,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("algorithm", ["fixed", "sliding", "bucket"])
@pytest.mark.parametrize("learned", [True, False], ids=["auto", "named"])
@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_never_more_than_the_limit_in_any_window_and_goodput_above_the_bound(
    algorithm: Algorithm, learned: bool, replicas: int
) -> None:
    for seed in range(3):
        outcome = run(algorithm, "auto" if learned else algorithm, replicas, seed)
        arrivals = [t for t, _ in outcome.arrivals]
        assert most_in_any_window(algorithm, arrivals) <= 0, (algorithm, replicas, seed)
        assert outcome.limited == 0, (algorithm, replicas, seed)
        assert outcome.goodput >= GOODPUT, (algorithm, replicas, seed, outcome.goodput)


def test_the_checker_sees_a_window_overrun() -> None:
    burst = [0.1 * n for n in range(LIMIT + 1)]
    assert most_in_any_window("fixed", burst) == 1
    assert most_in_any_window("sliding", burst) == 1
    assert most_in_any_window("bucket", burst) <= 0  # 2 s of refill cover the extra call
    assert most_in_any_window("bucket", [0.0] * (LIMIT + 1)) == 1


@pytest.mark.parametrize("named", ["fixed", "sliding", "bucket"])
def test_a_named_model_is_kept_whatever_the_answers_show(named: Algorithm) -> None:
    schedule = Schedule(120, counting=named)
    assert schedule.counting == named
    now = 0.0
    # Answers that look like a token bucket refilling (Remaining back up within the window).
    for remaining in (18, 17, 19, 18, 19, 19, 18):
        seq = schedule.sent(now)
        now += 0.5
        schedule.observe(seq, RateLimit(LIMIT, remaining, INTERVAL), sent_at=now - 0.5, now=now)
    assert schedule.counting == named


def test_learning_starts_from_fixed_windows() -> None:
    assert Schedule(60).counting == "fixed"


def test_every_tuned_number_is_documented() -> None:
    assert Tuning.__doc__
    for name in Tuning.__dataclass_fields__:
        assert isinstance(getattr(TUNING, name), int | float), name
    # Each field carries its own sentence (a string literal right after it in the source).
    lines = inspect.getsource(Tuning).splitlines()
    for name in Tuning.__dataclass_fields__:
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{name}:"))
        assert lines[at + 1].strip().startswith('"""'), f"{name} has no sentence"
