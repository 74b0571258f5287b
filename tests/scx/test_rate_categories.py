"""One rate-limit window per route category (issue 18, part 1): JTL's table, one pacing state
per category in the client, one window per category in the emulator."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from pydantic import SecretStr, ValidationError

from tests.support.broker import Names
from tests.support.endpoints import REFRESH_TOKEN
from tests.support.examples import SEED_TICKET
from tests.support.polling import wait_for
from tests.support.settings import make_settings
from worker.core.errors import RetryLater
from worker.core.settings import Settings
from worker.emulator import Emulator
from worker.emulator.events import seller_event
from worker.emulator.limits import CATEGORY_LIMITS
from worker.scx import ScxClient
from worker.scx.routes import WINDOWS, Window, category_of


@pytest.mark.parametrize(
    ("path", "category"),
    [
        ("/v1/channel/ticket", "channel"),
        ("/v1/channel/ticket/attachment", "channel"),
        ("/v1/channel/event", "event"),
        ("/v2/channel/event/anything", "event"),
        ("/v1/channel/order/shipping", "order"),
        ("/v1/channel/offer", "offer"),
        ("/v1/channel/attribute/category/7", "attribute_category"),
        ("/v1/channel/attribute/global", "attribute_global"),
        ("/v1/channel/categories", "attribute_global"),
        ("/v1/channel", "channel"),
        ("/v1/auth", "default"),
        ("/v1/seller/ticket", "default"),
        ("/health", "default"),
    ],
)
def test_the_most_specific_pattern_names_the_category(path: str, category: str) -> None:
    assert category_of(path) == category


def test_jtl_s_documented_windows() -> None:
    assert WINDOWS["event"] == Window(240, 60.0)
    assert WINDOWS["channel"] == Window(60, 60.0)
    assert WINDOWS["order"] == Window(600, 60.0)
    assert WINDOWS["offer"] == Window(1500, 60.0)
    assert WINDOWS["default"] == Window(10, 60.0)
    assert WINDOWS["attribute_global"] == Window(10, 3600.0)
    # The emulator's own reading of the same table agrees.
    for category, limit in CATEGORY_LIMITS.items():
        assert WINDOWS[category].limit == limit


def test_settings_per_category_and_the_counting_model() -> None:
    settings = Settings()
    assert settings.scx_max_requests_per_minute == 60  # still the channel category
    assert settings.scx_event_requests_per_minute == 240
    assert settings.scx_order_requests_per_minute == 600
    assert settings.scx_offer_requests_per_minute == 1500
    assert settings.scx_default_requests_per_minute == 10
    assert settings.scx_rate_counting == "auto"
    with pytest.raises(ValidationError):
        Settings(scx_rate_counting="leaky")


def client_for(settings: Settings, *, background: bool = False) -> ScxClient:
    return ScxClient(settings, SecretStr(REFRESH_TOKEN), background=background)


async def test_each_category_learns_only_from_its_own_answers(
    emulator: Emulator, names: Names
) -> None:
    emulator.configure(category_limits=True, rate_limit=30, event_rate_limit=120)
    settings = make_settings(
        names,
        emulator,
        scx_max_requests_per_minute=30,
        scx_event_requests_per_minute=120,
    )
    async with client_for(settings, background=True) as scx:
        assert scx.pacers["event"].interval == pytest.approx(0.5)
        assert scx.pacers["channel"].interval == pytest.approx(2.0)
        await scx.poll_events(100)
        await scx.send_ticket(orjson.dumps(SEED_TICKET))
        event = scx.pacers["event"]._schedule.windows
        channel = scx.pacers["channel"]._schedule.windows
        # Each saw its own window's Remaining (one call each), not the other's.
        assert event.remaining == 119
        assert channel.remaining == 29
        # The bridge is a background caller in the channel category only.
        assert channel.background
        assert not event.background
    windows = {w.category: w for w in emulator.state.rate_windows}
    assert (windows["event"].limit, windows["channel"].limit) == (120, 30)


async def test_a_429_on_the_event_routes_pauses_them_not_the_tickets(
    emulator: Emulator, names: Names
) -> None:
    # The 429's headers describe a 4 s window with nothing left: the events wait it out.
    emulator.configure(category_limits=True, rate_interval=4.0)
    settings = make_settings(
        names,
        emulator,
        scx_max_requests_per_minute=6000,
        scx_event_requests_per_minute=6000,
        scx_retry_budget=10.0,
    )
    emulator.inject("events", 429, retry_after=3)
    async with client_for(settings) as scx:
        poll = asyncio.ensure_future(scx.poll_events(10))
        await wait_for(
            lambda: emulator.state.route_statuses["events 429"] == 1, what="the events' 429"
        )
        started = time.monotonic()
        await scx.send_ticket(orjson.dumps(SEED_TICKET))
        assert time.monotonic() - started < 1.0, "the ticket waited out the events' 429"
        assert scx.pacers["event"].paused_until > time.monotonic() + 1
        assert scx.pacers["channel"].paused_until < time.monotonic()
        assert await poll == []  # answered once the events' pause is over
    assert time.monotonic() - started >= 2.0


async def test_the_emulator_limits_auth_in_the_default_category(
    emulator: Emulator, names: Names
) -> None:
    emulator.configure(category_limits=True, default_rate_limit=1, rate_interval=60)
    settings = make_settings(names, emulator, scx_retry_budget=0.5, scx_retry_attempts=1)
    async with client_for(settings) as scx:
        await scx.poll_events(1)
    emulator.revoke_tokens()
    async with client_for(settings) as scx:
        with pytest.raises(RetryLater):
            await scx.poll_events(1)
    assert emulator.state.auth_calls == 2
    [auth] = [w for w in emulator.state.rate_windows if w.category == "default"]
    assert (auth.limit, auth.requests, auth.limited) == (1, 2, 1)


async def test_a_full_page_of_the_event_window_at_its_own_rate(
    emulator: Emulator, names: Names
) -> None:
    """The bridge's calls go at the event category's rate, not the tickets' 60 a minute."""
    emulator.configure(category_limits=True, rate_interval=2.0, rate_limit=2, event_rate_limit=8)
    emulator.add_events([seller_event(f"e-{n}", "System:Test", {}) for n in range(12)])
    settings = make_settings(
        names,
        emulator,
        scx_max_requests_per_minute=60,  # 2 per 2 s: the channel category
        scx_event_requests_per_minute=240,  # 8 per 2 s
    )
    async with client_for(settings, background=True) as scx:
        started = time.monotonic()
        for _ in range(8):
            await scx.poll_events(1)
        took = time.monotonic() - started
    assert emulator.state.route_statuses["events 429"] == 0
    assert took < 3.0, f"8 event calls took {took:.1f} s: paced as tickets"
