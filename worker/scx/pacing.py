"""Client-side pacing: keep calls under the API's limit, alone or beside replicas.

The API counts one window **per route category** (``worker.scx.routes``: tickets, uploads and
downloads 60 per 60 s, seller events 240, ...) per channel credential, and every replica of
the worker (and the events bridge) shares each. The client keeps one ``Pacer`` per category,
which learns only from its own category's answers; everything below is about one of them.
There is no coordinator:
each process paces itself from what the API tells every caller, the ``X-RateLimit-Limit``,
``-Remaining`` and ``-Interval-Length-Seconds`` headers. They do not say *how* the API
counts, and it matters: fixed windows reset at once, a sliding window frees each call an
interval after it was made, a token bucket refills continuously (and saves up to a full
bucket). Pacing that waits for a reset which never comes uses half of a sliding window.

Four rules decide when the next request of this process may go (``Schedule``, pure):

1. **Never faster than** the category's setting (``SCX_MAX_REQUESTS_PER_MINUTE`` for the
   channel category, ``SCX_EVENT_REQUESTS_PER_MINUTE`` ...), evenly spaced, in arrival order.
2. **Fixed windows** (``WindowBudget``), assumed until the answers show otherwise: spread
   what is left of the window over the time left in it. With ``R`` calls left (as last
   reported, minus our own calls since) and the window ending at ``E``, the next call waits
   at least ``(E - last) / (R - reserve + 1)``, so the last call of a window lands one gap
   before its end. Alone, this is even pacing at the limit; beside replicas that all follow
   it, the shared remainder drains in proportion to time left and reaches zero as the window
   closes. ``reserve`` is what the *other* callers used between two of our own answers. The
   window's end is estimated late rather than early (a window is known to have started when
   the remainder goes up to about the whole limit), which costs a little idle time, never a
   429. A **background** caller (the events bridge, polling every ``EVENTS_POLL_INTERVAL``
   beside busy workers) hears of the window seldom, and its calls come between the workers'
   answers where their reserve does not expect them: it leaves a window's last calls to them,
   waiting for the next window once the others, going on as fast as between its last two
   answers, have likely left no more than its reserve.
3. **Capacity that comes back over time** (``RecentCalls``): once ``Remaining`` rises
   without a reset to about the whole limit, two "resets" come within less than an
   interval, or the estimated window is over and nothing was reset, the API does not count
   in windows, and for good this process keeps to **its own calls of the last interval**:
   it reuses a slot it held an interval after the answer to the call in it (the API counts
   a call from its arrival, which came before the answer, so the slot is surely free,
   however slow the network), and takes a slot more only when it was free at all our
   answers of the last interval, beyond what the others added between two of them.
   The others keep to theirs, so the calls of any interval stay within the limit: what a
   sliding window admits, and a token bucket of the same limit admits too.

4. **A pause taken together** (``Lull``) tells a token bucket from a window. For its first
   interval a token bucket shared by several callers reads exactly like a window with fewer
   other callers (the refill hides among the others' calls): the callers would spend the
   saved-up bucket and its refill, about twice the limit, keep to those calls for one more
   interval, and each learn "bucket" from a 429. What tells them apart is a moment when
   nobody calls: within the first interval a window gives nothing back, a bucket refills.
   Nobody coordinates the callers, but they all read the same counter, so each pauses at
   its first answer of its first half-interval that shows ``Remaining`` at half the limit or
   below: for 0.3 interval if the others used at least half as many calls as it did, else
   for two calls' worth of the refill. Two replicas at the full limit that share a bucket
   each see ``Remaining`` fall by exactly their own calls (each takes the refill the other
   leaves), as a process alone under a window does; a process alone tells a bucket by itself,
   but cannot make up a pause at the full rate, so the short pause costs it two calls, once.
   The pauses overlap; the first answer after one shows the refill. A caller
   that saw some capacity back, but not more than the calls counted before its first one
   could give back by aging out, looks once more 0.1 interval later; one that saw the bucket
   holds back 0.1 interval so that the refill stays visible to those still looking. Under
   windows the pause costs nothing: what is left of the window is spread over the time left,
   and the other callers' share lets each make it up within the interval.

What the others hold is read from ``Remaining``: under a sliding window it is the limit
minus ``Remaining`` minus our own calls of the interval. A token bucket reports its whole
tokens, including tokens saved up, which would make the others' share look smaller than it
is, so once the answers show a bucket (``Remaining`` plus our own calls of the interval above
the limit, tokens back within an interval of our first call, or a 429 on a slot we held),
the others' calls are counted from how ``Remaining`` moves between two of our answers, net
of our own calls and of the refill (``limit / interval`` a second, up to the capacity), and
we hold no more than the limit leaves beside them.

What this cannot always tell: with only 20 calls per interval, the pause may refill too
little to be sure for four or more replicas, or for two beside the events bridge (whose poll
takes part of the refill); each such caller then learns from one 429. With 60 calls, up to
six replicas were sure in every simulated run.
``tests/support/pacing_sim.py`` simulates replicas against the emulator's limiters
(``worker/emulator/limits.py``); ``make bench`` measures real processes.

``SCX_RATE_COUNTING`` names the model for a user who knows it (``fixed``, ``sliding``,
``bucket``): the schedule then starts with it, never switches, and skips rule 4. The default,
``auto``, learns it as above. Every tuned number of the rules is a field of ``Tuning``.

A 429 pauses every sender of the process in that category (``pause_until``) so that
in-flight messages do not each spend a retry on a limit already known to be exhausted; the
refused call holds no slot, and under rule 3 we held one slot fewer than we thought.

``per_minute == 0`` turns pacing off; 429 pauses still apply.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import structlog

from worker.scx.responses import RateLimit
from worker.scx.waits import Waits

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Tuning:
    """Every tuned number of the pacing rules, each with the reason for its value.

    Fractions are of the window's interval unless said otherwise. Tuned against the
    emulator's limiters in ``tests/support/pacing_sim.py`` and measured in ``make bench``;
    change one only with both at hand.
    """

    max_reserve: int = 10
    """Rule 2: what other callers used between two of our answers is capped at this many
    calls, so that a burst seen once (answers overtaking each other) cannot hold a whole
    window back."""
    recheck: float = 0.001
    """Seconds to wait before looking again when the answer is "not yet" and the edge is now
    (never zero, which would read as "go", and a float may land on the edge)."""
    margin_fraction: float = 0.01
    """Rule 3: an answer is remembered this much longer than the interval, so one that
    arrived just before the interval's edge still says who held the calls at its end ..."""
    margin_min: float = 0.05
    """... and at least this many seconds, for short test intervals."""
    unanswered_for: float = 2.0
    """Rule 3: intervals an unanswered call of ours is still counted as the API's, long
    after it went out (it may have arrived at any moment until its answer)."""
    lull: float = 0.3
    """Rule 4: the shared pause. It must outlast what a bucket needs to refill more than the
    calls counted before ours could give back by aging out (a few calls' worth at 20 per
    10 s, the callers pausing up to one of their gaps apart), and stay short enough for three
    callers to make it up within the interval."""
    lone_lull_calls: float = 2.0
    """Rule 4, alone as far as the answers show (two replicas that each take the refill the
    other leaves look like that): pause for this many calls' worth of refill. It shows them
    the bucket and costs a process that is really alone two calls, once."""
    lull_within: float = 0.5
    """Rule 4: the pause starts only at an answer within this fraction of our first
    interval; later the window or the refill has shown itself anyway."""
    lull_at_remaining: float = 0.5
    """Rule 4: ... and only once ``Remaining`` is at this fraction of the limit or below
    (every caller reads the same counter, so their pauses overlap)."""
    others_share: float = 0.5
    """Rule 4: the others count as "there" (the long pause) when they used at least this
    share of the calls we did."""
    look_again: float = 0.1
    """Rule 4: a second look this much later, when the first saw some capacity back but not
    more than aging out could give."""
    hold: float = 0.1
    """Rule 4: how long a caller that saw the bucket leaves the refill to those still
    looking."""
    reset_slack_calls: int = 2
    """Windows: ``Remaining`` this many calls (plus twice the others' reserve, at most half
    the limit) below the whole limit still reads as a reset: the others may have called in
    the new window before our answer."""
    resets_apart: float = 0.75
    """Windows: two "resets" closer than this fraction of the interval are a token bucket's
    refill, not windows."""
    first_interval: float = 0.9
    """Rule 3: capacity back within this fraction of the interval after our first answer is
    compared with what a sliding window could free (a little under the interval, so that a
    window's own reset is not taken for refill)."""
    refill_slack_calls: int = 1
    """Rule 3: more than this many calls back beyond what a sliding window could free proves
    refill (one call of rounding in the whole tokens)."""
    saved_up_calls: int = 1
    """Rule 3: ``Remaining`` plus our own calls above the limit by more than this (the
    whole-token rounding) proves tokens saved up: a bucket."""
    refused_slot_calls: int = 2
    """Rule 3: a 429 on a slot we held proves a bucket when the bucket reading of the others
    exceeds the window reading by at least this many calls."""


TUNING = Tuning()
# Kept by name for readers of the rules below.
MAX_RESERVE = TUNING.max_reserve


class Seen(NamedTuple):
    """One of our answers, as far as ``Remaining`` goes."""

    at: float
    remaining: int


class OwnCall(NamedTuple):
    """One of our calls the API may still count."""

    sent: float
    answered: float | None


class Moved(NamedTuple):
    """The others' calls counted so far (bucket reading), as of one of our answers."""

    at: float
    total: float


class WindowBudget:
    """What this process knows of the API's current rate-limit window (no I/O, no clock)."""

    def __init__(self, *, background: bool = False) -> None:
        self.background = background  # see ``earliest``
        self.window_end: float | None = None
        self.remaining: int | None = None
        self.reserve = 0
        # The others' calls a second between our last two answers of this window (0: unknown).
        self.others_rate = 0.0
        self._answered_at = -math.inf
        self._sent = 0
        self._seen_seq = 0
        self._seen_remaining: int | None = None

    def sent(self) -> int:
        """Count one call of ours; returns its sequence number for ``observe``."""
        self._sent += 1
        if self.remaining is not None:
            self.remaining -= 1
        return self._sent

    def observe(self, seq: int, limit: RateLimit, *, sent_at: float, now: float) -> None:
        """Take in the headers of the answer to call ``seq``, sent at ``sent_at``."""
        if seq <= self._seen_seq:
            return  # an older answer overtaken by a newer one says nothing new
        previous, previous_seq = self._seen_remaining, self._seen_seq
        new_window = (
            self.window_end is None
            or sent_at >= self.window_end
            or (previous is not None and limit.remaining > previous)
            or limit.remaining == limit.limit - 1
        )
        if new_window:
            self.window_end = now + limit.interval
            self.others_rate = 0.0
        elif previous is not None:
            others = previous - limit.remaining - (seq - previous_seq)
            if others > 0:
                self.reserve = min(others, TUNING.max_reserve)
            if now > self._answered_at:
                self.others_rate = max(0, others) / (now - self._answered_at)
        self._answered_at = now
        self._seen_seq, self._seen_remaining = seq, limit.remaining
        self.remaining = limit.remaining - (self._sent - seq)

    def exhausted_until(self, deadline: float) -> None:
        """A 429: nothing is left until ``deadline``."""
        self.window_end = max(self.window_end or 0.0, deadline)
        self.remaining = 0

    def earliest(self, now: float, last_sent: float) -> float:
        """The earliest time the next call fits this window's budget.

        A ``background`` caller calls seldom (the events bridge polling an empty feed), so
        what it last heard of the window is old: the others have gone on calling since. It
        leaves the window's last calls to them (whose own reckoning does not expect it) and
        waits for the next window once the others, calling as fast as between its last two
        answers, have likely left no more than ``reserve``.
        """
        if self.window_end is None or self.remaining is None or now >= self.window_end:
            return now  # no budget known, or the window it described is over
        usable = self.remaining - self.reserve
        if self.background:
            usable -= math.floor(self.others_rate * (now - self._answered_at))
        if usable <= 0:
            return self.window_end
        if last_sent == -math.inf:
            return now
        # usable + 1 gaps for usable calls: the last one lands a gap before the window
        # closes, not on its edge, where it would open (and spend) the next window.
        return max(now, last_sent + (self.window_end - last_sent) / (usable + 1))


# How the API seems to count, as far as its answers have shown ("fixed" until they show more).
Counting = Literal["fixed", "sliding", "bucket"]
# ``SCX_RATE_COUNTING``: learn it from the answers ("auto"), or take the user's word for it.
CountingSetting = Literal["auto", "fixed", "sliding", "bucket"]


def margin(interval: float) -> float:
    """How much longer than the interval an answer is remembered: one that arrived just
    before the interval's edge still says who held the calls at its end."""
    return max(TUNING.margin_fraction * interval, TUNING.margin_min)


class _Answer(NamedTuple):
    """What one of our answers said about who held the interval's calls."""

    at: float
    own: int  # our calls the API counted with it
    by_window: int  # the others' calls, if the API counts a sliding window
    by_bucket: int  # the others' calls, if it counts a token bucket

    def others(self, bucket: bool) -> int:
        return self.by_bucket if bucket else self.by_window


class RecentCalls:
    """Pacing for a limit that frees capacity as time goes on (sliding window, token bucket).

    No coordinator, so every process keeps to **its own calls of the last interval**: it may
    hold as many as the API counted of ours at any of our answers of the last interval
    (``held``, counting only the calls that surely arrived within it), and a slot comes free
    for us again an interval after the answer to our call in it (the call arrived before its
    answer, so by then the API no longer counts it). A slot more is taken only while our
    count stays below ``limit - others - growth``: ``others`` is the most calls the *other*
    callers had counted at any of those answers, ``growth`` the most they added between two
    of them (they may have done so again since our last answer). The others keep to theirs,
    so the calls of any interval stay within the limit, which a sliding window admits, and a
    token bucket of the same limit admits too. A slot another caller gives up shows as
    ``Remaining`` and is taken over once it stayed free at all our answers of an interval.

    ``others`` is read from ``Remaining``: under a sliding window it is ``limit - remaining``
    minus our own calls of the interval. A token bucket reports its whole tokens instead,
    which may include tokens saved up, so once the answers show a bucket (``not_sliding``)
    the others' calls are counted from how ``Remaining`` moves between two of our answers,
    net of our own calls and of the refill (``limit / interval`` a second, up to the
    capacity), and we hold no more than the limit leaves beside them.
    """

    def __init__(self) -> None:
        # Set once the answers showed capacity a sliding window cannot have: a token bucket.
        self.not_sliding = False
        # The user named the model (SCX_RATE_COUNTING): the answers do not change it.
        self.model_named = False
        self._limit: int | None = None
        self._interval = 0.0
        # Our calls the API may still count, by number: (sent at, answered at or None).
        self._own: dict[int, OwnCall] = {}
        self._seen: deque[_Answer] = deque()
        self._moved: deque[Moved] = deque()
        self._others_total = 0.0

    def sent(self, seq: int, now: float) -> None:
        self._own[seq] = OwnCall(now, None)

    def answered(self, seq: int, now: float) -> None:
        """Call ``seq`` was answered: it reached the API by ``now`` at the latest."""
        if seq in self._own:
            self._own[seq] = self._own[seq]._replace(answered=now)

    def refused(self, seq: int) -> None:
        """A 429: the call holds no slot, and we held one fewer than we thought (another
        caller took it), so it is not ours to take again an interval later."""
        self._own.pop(seq, None)
        self._seen = deque(answer._replace(own=max(0, answer.own - 1)) for answer in self._seen)

    def observe(
        self,
        seq: int,
        limit: RateLimit,
        *,
        sent_at: float,
        now: float,
        before: Seen | None,
        ours: int,
    ) -> None:
        """Take in the answer to our call sent at ``sent_at``; ``before`` is (time,
        remaining) of our previous answer, ``ours`` the calls we sent in between."""
        self._limit, self._interval = limit.limit, limit.interval
        window = limit.interval
        # Ours the API surely counted with this call: sent within the interval before this
        # answer, and answered before this call went out (so they arrived before it).
        own = sum(
            1
            for number, (sent, answered) in self._own.items()
            if sent > now - window
            and (number == seq or (answered is not None and answered <= sent_at))
        )
        by_window = max(0, limit.limit - limit.remaining - own)
        if before is not None:
            then, remaining = before
            # A bucket cannot fill past its capacity; the whole tokens hide a fraction of one.
            headroom = max(0.0, limit.limit - remaining - 1.0)
            refill = min(limit.limit / window * (now - then), headroom)
            self._others_total += remaining - limit.remaining - ours + refill
        self._moved.append(Moved(now, self._others_total))
        by_bucket = max(0, round(self._others_total - self._total_at(now - window)))
        self._seen.append(_Answer(now, own, by_window, by_bucket))
        if not self.model_named and limit.remaining + own > limit.limit + TUNING.saved_up_calls:
            self.not_sliding = True  # a sliding window counts our own calls; a bucket saves up

    @property
    def counting(self) -> Counting:
        return "bucket" if self.not_sliding else "sliding"

    @property
    def last_answer(self) -> _Answer | None:
        return self._seen[-1] if self._seen else None

    def earliest(self, now: float) -> float:
        """The earliest time our next call keeps within our share of the interval."""
        if self._limit is None:
            return now
        span = self._interval + margin(self._interval)
        self._forget(now - 2 * span)  # what no answer of the last span can still refer to
        seen = [answer for answer in self._seen if answer.at > now - span]
        bucket = self.not_sliding
        others = max((answer.others(bucket) for answer in seen), default=0)
        held = max((answer.own for answer in seen), default=0)
        if self.not_sliding:
            # Saved-up tokens let us hold more than the bucket refills: not ours to keep.
            held = min(held, self._limit - others)
        # Our calls the API may still count: each until an interval after its answer (by
        # then it has arrived), one still unanswered until long after it went out.
        recent = sorted(
            answered if answered is not None else sent + TUNING.unanswered_for * self._interval
            for sent, answered in self._own.values()
        )
        recent = [t for t in recent if t > now - self._interval]
        count = len(recent)
        if count < held:
            return now  # a slot we held has come free again: ours to use
        # A slot more than we held: only if it stayed free at all our answers of the span,
        # beside what the others may have taken since the last one.
        claimable = self._limit - others - _growth(seen, bucket)
        if count < claimable:
            return now
        # When one of our calls leaves the span, or what we saw of the others goes stale;
        # never "now", which would read as a yes (and a float may land on the edge).
        later = [seen[0].at + span] if seen else []
        later += [recent[count - n] + self._interval for n in (held, claimable) if 0 < n <= count]
        return max(min(later, default=now), now + TUNING.recheck)

    def _total_at(self, when: float) -> float:
        total = 0.0
        for moved in self._moved:
            if moved.at > when:
                break
            total = moved.total
        return total

    def _forget(self, before: float) -> None:
        for number, (sent, answered) in list(self._own.items()):
            if max(sent + TUNING.unanswered_for * self._interval, answered or 0.0) <= before:
                del self._own[number]
        while self._seen and self._seen[0].at <= before:
            self._seen.popleft()
        while len(self._moved) > 1 and self._moved[1].at <= before:
            self._moved.popleft()


def _growth(seen: list[_Answer], bucket: bool) -> int:
    """The most the others added between two of our answers."""
    steps = [b.others(bucket) - a.others(bucket) for a, b in itertools.pairwise(seen)]
    return max(steps, default=0)


# Rule 4's pause and looks, by name (see ``Tuning``).
LULL = TUNING.lull
LONE_LULL = TUNING.lone_lull_calls
LOOK_AGAIN = TUNING.look_again
HOLD = TUNING.hold


class Lull:
    """Rule 4: one pause, taken with the other callers, that tells a token bucket from a
    window for their first interval (pure: no clock, no I/O).

    Nobody coordinates the callers, but they all read the same counter: each one starts its
    pause at its first answer that shows ``Remaining`` at half the limit or below, so the
    pauses overlap. Within the first interval a window gives nothing back while nobody calls
    (a sliding window frees only the calls counted before our first one); a bucket refills.
    """

    def __init__(self) -> None:
        self.until = 0.0  # no call of ours before this
        self._started = False
        self._looks = 0  # answers after the pause still to read

    def start_if_due(self, limit: RateLimit, *, seq: int, first: Seen, now: float) -> None:
        """Pause if this answer is the first of our first half-interval at half the limit or
        below: for ``LULL`` of the interval if the others used at least half as many calls
        as our ``seq`` so far, else for ``LONE_LULL`` calls' worth."""
        first_at, first_remaining = first
        half = int(limit.limit * TUNING.lull_at_remaining)
        if (
            not self._started
            and now < first_at + TUNING.lull_within * limit.interval
            and first_remaining > half >= limit.remaining
        ):
            self._started = True
            self._looks = 2
            if limit.limit - limit.remaining - seq >= TUNING.others_share * seq:
                self.until = now + LULL * limit.interval
            else:
                self.until = now + LONE_LULL * limit.interval / limit.limit

    def looked(
        self, *, sent_at: float, now: float, interval: float, came_back: int, bucket: bool
    ) -> None:
        """Read the answer to a call sent at ``sent_at``: ``came_back`` is the capacity it
        showed back since our previous answer, ``bucket`` whether that proved a bucket."""
        if not self._looks or sent_at < self.until:
            return
        if bucket:
            self._looks = 0
            self.until = now + HOLD * interval
        elif came_back > 0 and self._looks > 1:
            self._looks -= 1
            self.until = now + LOOK_AGAIN * interval
        else:
            self._looks = 0


class Schedule:
    """When this process may make its next call: the pure part of ``Pacer`` (no clock, no I/O).

    Starts out reading the headers as fixed windows (``WindowBudget``) and switches to
    ``RecentCalls`` for good once the answers show capacity coming back in a way windows
    cannot: ``Remaining`` rising without a reset to about the whole limit, two resets within
    less than an interval, or no reset when the estimated window is over.
    """

    def __init__(
        self, per_minute: float, *, background: bool = False, counting: CountingSetting = "auto"
    ) -> None:
        self.gap = 60.0 / per_minute if per_minute > 0 else 0.0
        # "auto" learns how the API counts; any other setting is the user's word, kept.
        self._fixed_model = counting != "auto"
        # The answers showed (or the user said) that the API does not count in windows.
        self._windows_over = counting in ("sliding", "bucket")
        self.windows = WindowBudget(background=background)
        self.recent = RecentCalls()
        self.recent.not_sliding = counting == "bucket"
        self.recent.model_named = self._fixed_model
        self.paused_until = 0.0
        self.last_sent = -math.inf
        self._seen_seq = 0
        self._before: Seen | None = None  # our previous answer
        self._first: Seen | None = None  # our first answer
        self._last_reset: float | None = None
        self._limit_seen, self._interval_seen = 0, 0.0
        self._came_back = 0  # calls' worth of capacity that came back within our first interval
        self._refused: set[int] = set()
        self._lull = Lull()

    @property
    def counting(self) -> Counting:
        if not self._windows_over:
            return "fixed"
        return self.recent.counting

    def next_slot(self, now: float) -> float:
        if self.counting == "fixed":
            budget = self.windows.earliest(now, self.last_sent)
        else:
            budget = self.recent.earliest(now)
        return max(self.last_sent + self.gap, self.paused_until, self._lull.until, budget)

    def sent(self, now: float) -> int:
        self.last_sent = now
        seq = self.windows.sent()
        self.recent.sent(seq, now)
        return seq

    def observe(
        self, seq: int, limit: RateLimit, *, sent_at: float, now: float, refused: bool = False
    ) -> None:
        self.recent.answered(seq, now)
        if refused:
            self.recent.refused(seq)
            self._refused.add(seq)
            last = self.recent.last_answer
            bucket_reading = last is not None and (
                last.by_bucket >= last.by_window + TUNING.refused_slot_calls
            )
            if self._windows_over and bucket_reading:
                # Keeping to our own slots is never refused by a sliding window (unless a new
                # caller came): the capacity we counted on was saved up, so a token bucket.
                self._switch(bucket=True)
        if seq <= self._seen_seq:
            return  # an older answer overtaken by a newer one says nothing new
        ours = seq - self._seen_seq - sum(1 for s in self._refused if s > self._seen_seq)
        self._refused = {s for s in self._refused if s > seq}
        was_bucket = self.counting == "bucket"
        # Capacity back since our previous answer, net of our own calls (None: no previous).
        came_back = (
            None if self._before is None else limit.remaining - (self._before.remaining - ours)
        )
        self._classify(limit, sent_at=sent_at, now=now, ours=ours, came_back=came_back)
        if came_back is not None:
            self._lull.looked(
                sent_at=sent_at,
                now=now,
                interval=limit.interval,
                came_back=came_back,
                bucket=not was_bucket and self.counting == "bucket",
            )
        self.recent.observe(seq, limit, sent_at=sent_at, now=now, before=self._before, ours=ours)
        self.windows.observe(seq, limit, sent_at=sent_at, now=now)
        self._seen_seq = seq
        self._before = Seen(now, limit.remaining)
        if self._first is None:
            self._first = Seen(now, limit.remaining)
        if not was_bucket and not self.windows.background and not self._fixed_model:
            # Rule 4 only tells models apart: with the model given there is nothing to tell.
            self._lull.start_if_due(limit, seq=seq, first=self._first, now=now)

    def pause_until(self, deadline: float) -> None:
        if deadline > self.paused_until:
            self.paused_until = deadline
            self.windows.exhausted_until(deadline)

    def window_end(self) -> float | None:
        return self.windows.window_end if self.counting == "fixed" else None

    def _classify(
        self, limit: RateLimit, *, sent_at: float, now: float, ours: int, came_back: int | None
    ) -> None:
        if came_back is None:
            return
        remaining, interval = limit.remaining, limit.interval
        self._limit_seen, self._interval_seen = limit.limit, interval
        up = came_back > 0
        slack = min(limit.limit // 2, 2 * self.windows.reserve + TUNING.reset_slack_calls)
        reset = up and remaining >= limit.limit - ours - slack
        if reset:
            if (
                self._last_reset is not None
                and now - self._last_reset < TUNING.resets_apart * interval
            ):
                self._switch(bucket=True)  # two "resets" within an interval: tokens
            self._last_reset = now
        elif up:
            self._switch(bucket=self._refilled_early(came_back, now))
        end = self.windows.window_end
        # An end that a pause set (Retry-After, maybe shorter than the window) proves nothing.
        over = end is not None and end != self.paused_until and sent_at >= end
        if not self._windows_over and over and not reset:
            self._switch(bucket=False)  # the window is over and nothing was reset

    def _refilled_early(self, came_back: int, now: float) -> bool:
        """More capacity came back within an interval of our first call than the calls
        counted before it could free in a sliding window: refill, so a token bucket."""
        first = self._first
        if first is None or now >= first.at + TUNING.first_interval * self._interval_seen:
            return False
        self._came_back += came_back
        counted_before_ours = self._limit_seen - 1 - first.remaining
        return self._came_back > counted_before_ours + TUNING.refill_slack_calls

    def _switch(self, *, bucket: bool) -> None:
        if self._fixed_model:
            return  # the user named the model
        self._windows_over = True
        self.recent.not_sliding |= bucket


class Pacer:
    def __init__(
        self,
        per_minute: float,
        *,
        waits: Waits | None = None,
        clock: Callable[[], float] = time.monotonic,
        background: bool = False,
        counting: CountingSetting = "auto",
        category: str = "channel",
    ) -> None:
        self._waits = waits or Waits()
        self._clock = clock
        self.category = category
        """The route category (``worker.scx.routes``) whose window this pacer keeps to."""
        self._schedule = Schedule(per_minute, background=background, counting=counting)
        # Senders take their turn in arrival order; only the head waits on the clock, so
        # its slot is computed from the freshest headers rather than reserved in advance.
        self._turn = asyncio.Lock()

    @property
    def interval(self) -> float:
        return self._schedule.gap

    @property
    def paused_until(self) -> float:
        return self._schedule.paused_until

    @property
    def counting(self) -> Counting:
        """How the API seems to count, from its answers so far."""
        return self._schedule.counting

    async def acquire(self) -> int:
        """Wait for this caller's turn; returns the call's number for ``observe``."""
        self._waits.raise_if_interrupted()
        schedule = self._schedule
        if not schedule.gap:
            while (wait := schedule.paused_until - self._clock()) > 0:
                await self._waits.sleep(wait)
            return 0
        async with self._turn:
            self._waits.raise_if_interrupted()
            # A loop: a 429 or new headers may move the slot while the head waits.
            while (wait := schedule.next_slot(now := self._clock()) - now) > 0:
                await self._waits.sleep(wait)
            return schedule.sent(now)

    def observe(self, seq: int, limit: RateLimit, *, sent_at: float, refused: bool = False) -> None:
        """Adapt to the rate-limit headers of the answer to call ``seq`` (``refused``: a 429)."""
        schedule = self._schedule
        if schedule.gap and seq:
            before = schedule.counting
            schedule.observe(seq, limit, sent_at=sent_at, now=self._clock(), refused=refused)
            if schedule.counting != before:
                log.info(
                    "scx.rate_limit_counting",
                    counting=schedule.counting,
                    was=before,
                    category=self.category,
                )

    def pause_until(self, deadline: float) -> None:
        """Hold every send until ``deadline`` (monotonic seconds); later deadlines win."""
        self._schedule.pause_until(deadline)

    def pause_for(self, seconds: float) -> None:
        self.pause_until(self._clock() + seconds)

    def window_end(self) -> float | None:
        """When the current rate-limit window ends, if the headers told us."""
        end = self._schedule.window_end()
        return end if end is not None and end > self._clock() else None
