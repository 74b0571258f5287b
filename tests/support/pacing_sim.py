"""A discrete-event simulation of replicas pacing against one limiter (pure and fast).

Each replica is the pacer's own pure core (``worker.scx.pacing.Schedule``) driven the way
``Pacer`` drives it: a backlog that never runs dry, the head of the line sleeping until its
slot and computing it again when it wakes, a 429 pausing the replica for the whole seconds of
``Retry-After`` (``ScxClient._take_in``). The limiter is the emulator's
(``worker.emulator.limits``). Network latency is random each way; the replicas start a
fraction of a second apart. No I/O and no clock: a minute of eight replicas is milliseconds.

Figures are counted like ``make bench`` counts them: from the first call the limiter sees,
for ``seconds``.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from dataclasses import dataclass, field

from worker.emulator.limits import Algorithm, Decision, Limiter
from worker.scx.pacing import CountingSetting, Schedule
from worker.scx.responses import RateLimit


@dataclass
class _Call:
    seq: int
    sent_at: float
    decision: Decision | None = None


@dataclass(frozen=True)
class Outcome:
    calls: int
    admitted: int
    limited: int
    sustained: float  # what the limit sustains in the measured time
    longest_poll_gap: float = 0.0  # the most time between two polls of one poller
    # When each call reached the limiter, and whether it was admitted (for invariants).
    arrivals: list[tuple[float, bool]] = field(default_factory=list, repr=False)

    @property
    def goodput(self) -> float:
        return self.admitted / self.sustained

    @property
    def share_429(self) -> float:
        return self.limited / self.calls if self.calls else 0.0


class _Polls:
    """When each poller last polled, and the longest wait between two polls of one."""

    def __init__(self) -> None:
        self._last: dict[int, float] = {}
        self.longest_gap = 0.0

    def polled(self, poller: int, now: float) -> None:
        if poller in self._last:
            self.longest_gap = max(self.longest_gap, now - self._last[poller])
        self._last[poller] = now


def simulate(
    algorithm: Algorithm,
    limit: int,
    interval: float,
    replicas: int,
    *,
    seconds: float,
    seed: int = 0,
    latency: tuple[float, float] = (0.0005, 0.004),
    pollers: int = 0,
    poll_every: float = 10.0,
    start_spread: float = 0.5,
    counting: CountingSetting = "auto",
) -> Outcome:
    """``replicas`` pacers, each at the full limit per minute, against one limiter; beside
    them ``pollers`` callers like the events bridge on an empty feed (``background``
    pacers at the same limit), each calling ``poll_every`` seconds after its last answer.
    Every caller starts at a random moment of the first ``start_spread`` seconds."""
    rng = random.Random(seed)
    limiter = Limiter(algorithm, limit, interval)
    per_minute = limit * 60 / interval
    schedules = [Schedule(per_minute, counting=counting) for _ in range(replicas)]
    schedules += [Schedule(per_minute, background=True, counting=counting) for _ in range(pollers)]
    order = itertools.count()
    # (when, tie-break, replica, call): a call without a decision yet is on its way there,
    # one with a decision on its way back; no call at all is the replica's head waking up.
    events: list[tuple[float, int, int, _Call | None]] = []

    def at(when: float, replica: int, call: _Call | None = None) -> None:
        heapq.heappush(events, (when, next(order), replica, call))

    for replica in range(replicas + pollers):
        at(rng.uniform(0.0, start_spread), replica)
    end = math.inf
    calls = admitted = limited = 0
    polls = _Polls()
    arrivals: list[tuple[float, bool]] = []
    while events:
        now, _, replica, call = heapq.heappop(events)
        if now > end:
            break
        schedule = schedules[replica]
        if call is None:
            slot = schedule.next_slot(now)
            if slot > now:
                at(slot, replica)
                continue
            at(now + rng.uniform(*latency), replica, _Call(schedule.sent(now), now))
            if replica < replicas:
                at(now, replica)  # the next message in line takes its turn
            else:
                polls.polled(replica, now)
        elif call.decision is None:
            if end == math.inf:
                end = now + seconds
            call.decision = decision = limiter.take(now)
            calls += 1
            admitted += decision.admitted
            limited += not decision.admitted
            arrivals.append((now, decision.admitted))
            at(now + rng.uniform(*latency), replica, call)
        else:
            decision = call.decision
            headers = RateLimit(limit, decision.remaining, interval)
            refused = not decision.admitted
            schedule.observe(call.seq, headers, sent_at=call.sent_at, now=now, refused=refused)
            if refused:
                schedule.pause_until(now + math.ceil(decision.retry_after or 0.0))
            if replica >= replicas:  # a poller: its next poll (sooner after a 429)
                at(now + (1.0 if refused else poll_every), replica)
    sustained = limit * seconds / interval
    return Outcome(calls, admitted, limited, sustained, polls.longest_gap, arrivals)
