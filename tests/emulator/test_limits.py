"""The emulator's limiters, pure: explicit times, no server, no clock."""

from __future__ import annotations

import pytest

from worker.emulator.limits import Limiter


def take(limiter: Limiter, *times: float) -> list[tuple[bool, int]]:
    return [(d.admitted, d.remaining) for d in map(limiter.take, times)]


def test_fixed_windows_reset_at_once_when_the_interval_is_over() -> None:
    limiter = Limiter("fixed", 3, 10.0)
    assert take(limiter, 0.0, 1.0, 2.0) == [(True, 2), (True, 1), (True, 0)]
    refused = limiter.take(9.0)
    assert (refused.admitted, refused.remaining) == (False, 0)
    assert refused.retry_after == pytest.approx(1.0)  # the window opened at 0
    assert limiter.peek(9.99) == 0
    assert limiter.peek(10.0) == 3
    assert take(limiter, 10.5, 10.6, 10.7, 10.8) == [
        (True, 2),
        (True, 1),
        (True, 0),
        (False, 0),
    ]


def test_a_fixed_window_opens_with_the_first_call_after_the_last_one_ended() -> None:
    limiter = Limiter("fixed", 2, 10.0)
    assert limiter.take(0.0).period_start == 0.0
    assert limiter.take(25.0).period_start == 25.0  # not 20: windows are not on a grid
    assert limiter.take(34.9).period_start == 25.0


def test_a_sliding_window_frees_each_call_an_interval_after_it() -> None:
    limiter = Limiter("sliding", 3, 10.0)
    assert take(limiter, 0.0, 4.0, 8.0) == [(True, 2), (True, 1), (True, 0)]
    refused = limiter.take(9.0)
    assert not refused.admitted
    assert refused.retry_after == pytest.approx(1.0)  # the call of 0.0 leaves at 10.0
    assert limiter.peek(9.99) == 0
    assert limiter.peek(10.0) == 1  # only the first call left; nothing resets
    assert take(limiter, 10.0) == [(True, 0)]
    assert not limiter.take(13.9).admitted
    assert take(limiter, 14.0) == [(True, 0)]  # the call of 4.0 has left


def test_a_refused_call_costs_nothing() -> None:
    for algorithm in ("fixed", "sliding", "bucket"):
        limiter = Limiter(algorithm, 1, 10.0)
        assert limiter.take(0.0).admitted
        for t in (1.0, 2.0, 3.0):
            assert not limiter.take(t).admitted
        assert limiter.take(10.0).admitted, algorithm


def test_a_token_bucket_starts_full_and_refills_continuously() -> None:
    limiter = Limiter("bucket", 4, 8.0)  # a token every 2 s
    assert take(limiter, 0.0, 0.0, 0.0, 0.0) == [(True, 3), (True, 2), (True, 1), (True, 0)]
    refused = limiter.take(1.0)
    assert not refused.admitted
    assert refused.retry_after == pytest.approx(1.0)  # half a token in, half to go
    assert limiter.peek(1.99) == 0
    assert limiter.peek(2.0) == 1
    assert take(limiter, 2.0) == [(True, 0)]
    assert take(limiter, 5.0) == [(True, 0)]  # 1.5 tokens came, 1 spent: half left
    assert limiter.peek(100.0) == 4  # never more than the capacity


def test_the_bucket_reports_whole_tokens() -> None:
    limiter = Limiter("bucket", 10, 10.0)  # one token a second
    take(limiter, *[0.0] * 10)
    assert [limiter.peek(t) for t in (0.5, 1.0, 2.9, 3.0)] == [0, 1, 2, 3]


def test_periods_group_the_calls_of_the_continuous_algorithms() -> None:
    limiter = Limiter("sliding", 5, 10.0)
    starts = [limiter.take(t).period_start for t in (3.0, 9.0, 13.0, 13.5, 40.0)]
    assert starts == [3.0, 3.0, 13.0, 13.0, 40.0]


@pytest.mark.parametrize(
    ("algorithm", "limit", "interval"),
    [("leaky", 1, 1.0), ("fixed", 0, 1.0), ("sliding", 1, 0.0)],
)
def test_bad_limiters_are_refused(algorithm: str, limit: int, interval: float) -> None:
    with pytest.raises(ValueError):
        Limiter(algorithm, limit, interval)  # type: ignore[arg-type]
