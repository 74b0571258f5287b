"""Prometheus metrics: their declarations, and one reporting function per fact.

Every metric is named ``scx_forwarder_*`` and lives in prometheus-client's default
registry, next to its ``process_*`` and ``python_*`` collectors:

=============================================  ==========  ================================
metric                                         type        labels
=============================================  ==========  ================================
``tickets_forwarded_total``                    counter
``tickets_dead_lettered_total``                counter     ``kind``
``tickets_delayed_total``                      counter     ``reason``
``tickets_already_created_total``              counter
``attachments_uploaded_total``                 counter
``steps_skipped_total``                        counter     ``step``, ``source``
``retries_total``                              counter     ``reason``
``api_requests_total``                         counter     ``route``, ``status_class``
``api_request_duration_seconds``               histogram   ``route``
``publish_to_ack_seconds``                     histogram
``messages_in_flight``                         gauge
``token_expires_in_seconds``                   gauge
``rate_limit_remaining``                       gauge
``broker_connected``, ``consumer_up``          gauge (0/1)
``event_loop_lag_seconds``                     gauge
``api_rate_limited_total``                     counter     ``route``
``circuit_state``                              gauge (0/1) ``state``
``circuit_opened_total``                       counter
``queue_messages``, ``queue_consumers``        gauge       ``queue``, ``role``
``events_poller_active``                       gauge (0/1) ``lock``
``events_last_poll_success_timestamp_seconds`` gauge       ``lock``
``events_polled_total``                        counter     ``type``
``events_published_total``                     counter     ``type``
``events_acknowledged_total``                  counter     ``type``
``events_unrouted_total``                      counter     ``type``, ``reason``
``events_without_id_total``                    counter
``events_unpublishable_total``                 counter     ``type``
``events_attachments_not_delivered_total``     counter     ``type``
``events_poll_errors_total``                   counter     ``reason``
``events_publish_delay_seconds``               histogram   ``type``
``build_info``                                 gauge (1)   ``version``
``outcome_events_total``                       counter     ``type``, ``result``
=============================================  ==========  ================================

The hot path calls the plain functions below (``forwarded()``, ``dead_lettered(kind)``,
...), one line each, so worker modules never touch a metric object. Labels are bounded
on purpose (``worker.obs.labels``): a ``reason`` is reduced to a short class (``http_503``,
``timeout``, ``connection``, ``circuit_open``, ``auth_http_503``, ``other``), never the error
text, which would make a new time series per distinct message.

Nothing here imports what it observes. API requests are reported by the SCX client's own
instrumentation (``worker.scx.instrumentation``: httpx hooks that see the ticket calls and
the token refreshes alike; a request that got no answer at all has no status class and
shows up in ``retries_total`` instead). The gauges read at scrape time (``broker_connected``,
``consumer_up``, ``token_expires_in_seconds``) read callables the running service hands
over (``watch_probes``, ``watch_token``); until then they read 0.

The queue gauges come from ``worker.forward.queue_stats``: a passive declare of each of the
worker's queues on a timer, so the dead-letter queue's depth (which no consumer drains)
is visible to the alert rules in ``deploy/prometheus/alerts.yaml`` without the RabbitMQ
exporter. The ``events_*`` family belongs to ``scx-forwarder events`` (the seller-event
bridge); its functions are below under "events bridge", one call per fact.

State is per process: one worker per process is the deployment unit. Tests that run
several forwarders in one process share these counters and compare differences.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Literal

from prometheus_client import Counter, Gauge, Histogram

from worker import __version__
from worker.obs.labels import event_type_label, reason_label

PREFIX = "scx_forwarder_"
KINDS = ("malformed", "invalid", "rejected", "exhausted")
ROUTES = ("ticket", "upload", "auth")
CIRCUIT_STATES = ("closed", "open", "half-open")
QUEUE_ROLES = ("work", "dlq", "retry", "unrouted")
UNROUTED_REASONS = ("unroutable", "unmappable")

TICKETS_FORWARDED = Counter(
    PREFIX + "tickets_forwarded_total", "Tickets the API accepted (2xx) and that were acked."
)
TICKETS_DEAD_LETTERED = Counter(
    PREFIX + "tickets_dead_lettered_total",
    "Tickets copied to the dead-letter queue, by x-error-kind.",
    ["kind"],
)
TICKETS_DELAYED = Counter(
    PREFIX + "tickets_delayed_total",
    "Tickets parked in a delay queue after their in-process retries ran out, by reason.",
    ["reason"],
)
TICKETS_ALREADY_CREATED = Counter(
    PREFIX + "tickets_already_created_total",
    "Ticket calls answered 409 Conflict, read as: the API holds this ticket already.",
)
ATTACHMENTS_UPLOADED = Counter(
    PREFIX + "attachments_uploaded_total", "Attachment files the API stored (2xx to an upload)."
)
STEPS_SKIPPED = Counter(
    PREFIX + "steps_skipped_total",
    "Steps not repeated because they were done before, by step (ticket, upload) and by what "
    "said so (header: x-scx-progress, redis: the progress record).",
    ["step", "source"],
)
RETRIES = Counter(
    PREFIX + "retries_total", "In-process retries of an API call, by reason.", ["reason"]
)
API_REQUESTS = Counter(
    PREFIX + "api_requests_total",
    "Answers from the SCX API, by route (ticket, auth) and status class (2xx, 4xx, 5xx).",
    ["route", "status_class"],
)
API_DURATION = Histogram(
    PREFIX + "api_request_duration_seconds",
    "Time from sending an API request to its answer's headers, by route.",
    ["route"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
# AMQP timestamps have whole seconds, and at 60 calls a minute a backlog waits minutes
# to hours: the buckets span a second to a day.
PUBLISH_TO_ACK = Histogram(
    PREFIX + "publish_to_ack_seconds",
    "Time from a message's AMQP timestamp (its publish) to its ack, forwarded or dead-lettered.",
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
)
IN_FLIGHT = Gauge(
    PREFIX + "messages_in_flight", "Messages being worked on (at most WORKER_CONCURRENCY)."
)
TOKEN_EXPIRES_IN = Gauge(
    PREFIX + "token_expires_in_seconds", "Seconds until the access token held expires (0: none)."
)
RATE_LIMIT_REMAINING = Gauge(
    PREFIX + "rate_limit_remaining",
    "X-RateLimit-Remaining of the last ticket answer that had it (NaN until one had).",
)
BROKER_CONNECTED = Gauge(
    PREFIX + "broker_connected", "1 while the connection to RabbitMQ is open, else 0."
)
CONSUMER_UP = Gauge(
    PREFIX + "consumer_up", "1 while the worker consumes the work queue (and is connected)."
)
LOOP_LAG = Gauge(
    PREFIX + "event_loop_lag_seconds", "How late the event loop ran the last heartbeat (1 s apart)."
)
API_RATE_LIMITED = Counter(
    PREFIX + "api_rate_limited_total",
    "Answers 429 Too Many Requests from the SCX API, by route: the shared budget ran out.",
    ["route"],
)
CIRCUIT_STATE = Gauge(
    PREFIX + "circuit_state",
    "1 for the circuit breaker's current state (closed, open, half-open), 0 for the others.",
    ["state"],
)
CIRCUIT_OPENED = Counter(
    PREFIX + "circuit_opened_total", "Times the circuit breaker opened (or reopened after a probe)."
)
QUEUE_MESSAGES = Gauge(
    PREFIX + "queue_messages",
    "Messages ready in a queue at the last passive declare (NaN when it failed), by queue and "
    "role (work, dlq, retry, unrouted).",
    ["queue", "role"],
)
QUEUE_CONSUMERS = Gauge(
    PREFIX + "queue_consumers",
    "Consumers of a queue at the last passive declare (NaN when it failed).",
    ["queue", "role"],
)

# --- the events bridge (scx-forwarder events) -----------------------------------------
# Labelled by EVENTS_LOCK_NAME or the SCX event type, so none of these appear in a `run`
# process: an alert on a missing bridge must not be fed zeros by the ticket workers.
EVENTS_POLLER_ACTIVE = Gauge(
    PREFIX + "events_poller_active",
    "1 while this bridge holds the poller lock (EVENTS_LOCK_NAME) and polls, 0 on standby.",
    ["lock"],
)
EVENTS_LAST_POLL_SUCCESS = Gauge(
    PREFIX + "events_last_poll_success_timestamp_seconds",
    "Unix time of this bridge's last GET /v1/channel/event answered 2xx (empty pages count).",
    ["lock"],
)
EVENTS_POLLED = Counter(
    PREFIX + "events_polled_total", "Seller events received from SCX, by event type.", ["type"]
)
EVENTS_PUBLISHED = Counter(
    PREFIX + "events_published_total",
    "Seller events whose messages (reply, files) the broker confirmed, by event type.",
    ["type"],
)
EVENTS_ACKNOWLEDGED = Counter(
    PREFIX + "events_acknowledged_total",
    "Seller events acknowledged in SCX (DELETE /v1/channel/event answered 2xx), by event type.",
    ["type"],
)
EVENTS_UNROUTED = Counter(
    PREFIX + "events_unrouted_total",
    "Seller events put in EVENTS_UNROUTED_QUEUE, by type and reason (unroutable: no queue "
    "bound for the key; unmappable: the event could not be mapped).",
    ["type", "reason"],
)
EVENTS_WITHOUT_ID = Counter(
    PREFIX + "events_without_id_total",
    "Seller events without an id: they cannot be acknowledged, so they are logged and skipped.",
)
EVENTS_UNPUBLISHABLE = Counter(
    PREFIX + "events_unpublishable_total",
    "Seller events the broker refused every copy of, even to the unrouted queue, after "
    "EVENTS_DELIVERY_TRIES deliveries (once per event): SCX gives them up after 10.",
    ["type"],
)
EVENTS_ATTACHMENTS_NOT_DELIVERED = Counter(
    PREFIX + "events_attachments_not_delivered_total",
    "Files of seller replies published as not delivered: the download kept failing for "
    "EVENTS_DELIVERY_TRIES deliveries (the consumer fetches them later).",
    ["type"],
)
EVENTS_POLL_ERRORS = Counter(
    PREFIX + "events_poll_errors_total",
    "Failed GET /v1/channel/event polls, by reason (as retries_total).",
    ["reason"],
)
EVENTS_PUBLISH_DELAY = Histogram(
    PREFIX + "events_publish_delay_seconds",
    "Time from a seller event's createdAt in SCX to its confirmed publish, by event type.",
    ["type"],
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400),
)
OUTCOME_EVENTS = Counter(
    PREFIX + "outcome_events_total",
    "Outcome events the broker confirmed (WORKER_OUTCOME_EVENTS), by type and result "
    "(published, or unroutable: no queue was bound for it).",
    ["type", "result"],
)
# The usual *_info idiom: a constant 1 whose label says which release runs (join it onto
# other series, or see a rollout progress pod by pod).
BUILD_INFO = Gauge(
    PREFIX + "build_info", "Always 1; the version label is the running release.", ["version"]
)


def _show_zeros() -> None:
    """Create the usual label sets at 0, so dashboards and rate() see them from the start."""
    for kind in KINDS:
        TICKETS_DEAD_LETTERED.labels(kind)
    for route in ROUTES:
        for status_class in ("2xx", "4xx", "5xx"):
            API_REQUESTS.labels(route, status_class)
    RATE_LIMIT_REMAINING.set(math.nan)
    BUILD_INFO.labels(__version__).set(1)
    for route in ROUTES:
        API_RATE_LIMITED.labels(route)
    circuit_state("closed")


def circuit_state(state: str) -> None:
    """The breaker (``worker.scx.breaker``) is now in ``state``: closed, open or half-open."""
    for each in CIRCUIT_STATES:
        CIRCUIT_STATE.labels(each).set(1.0 if each == state else 0.0)


_show_zeros()


# --- hooks for the hot path ----------------------------------------------------------


def forwarded(published: datetime | None = None) -> None:
    """The API accepted a ticket; ``published`` is the message's AMQP timestamp, if any."""
    TICKETS_FORWARDED.inc()
    _observe_age(published)


def dead_lettered(kind: str, published: datetime | None = None) -> None:
    """A message's copy is in the DLQ (and the original acked)."""
    TICKETS_DEAD_LETTERED.labels(kind).inc()
    _observe_age(published)


def outcome_published(event_type: str, *, routed: bool) -> None:
    """The broker confirmed an outcome event; ``routed`` is False if no queue took it."""
    OUTCOME_EVENTS.labels(event_type, "published" if routed else "unroutable").inc()


def rate_limit_remaining(remaining: int) -> None:
    """The API's ``X-RateLimit-Remaining``, as the client read it for its pacing."""
    RATE_LIMIT_REMAINING.set(remaining)


def ticket_already_created() -> None:
    """A ticket call got 409 Conflict: the API has this ticket from an earlier delivery."""
    TICKETS_ALREADY_CREATED.inc()


def attachment_uploaded() -> None:
    ATTACHMENTS_UPLOADED.inc()


def step_skipped(step: str, source: str) -> None:
    """A step (``ticket``, ``upload``) was done before, as ``source`` (header, redis) says."""
    STEPS_SKIPPED.labels(step, source).inc()


def delayed(reason: str) -> None:
    """A message went to the delay stage; ``reason`` is the last error's text."""
    TICKETS_DELAYED.labels(reason_label(reason)).inc()


def retried(error: object) -> None:
    """An API call failed transiently and will be tried again; ``error`` as text or exception."""
    RETRIES.labels(reason_label(str(error))).inc()


def _observe_age(published: datetime | None) -> None:
    """A message was settled for good; observe its age if it carried an AMQP timestamp.

    A message that went through the delay stage or was replayed from the DLQ keeps its
    first timestamp, so this is the whole way from the marketplace to the API.
    """
    if published is None:
        return
    if published.tzinfo is None:  # AMQP timestamps are UTC seconds; some clients drop the zone
        published = published.replace(tzinfo=UTC)
    PUBLISH_TO_ACK.observe(max(0.0, (datetime.now(UTC) - published).total_seconds()))


def circuit_opened() -> None:
    CIRCUIT_OPENED.inc()


def queue_stats(queue: str, role: str, messages: float, consumers: float) -> None:
    """What a passive declare of ``queue`` said; NaN for both when it failed."""
    QUEUE_MESSAGES.labels(queue, role).set(messages)
    QUEUE_CONSUMERS.labels(queue, role).set(consumers)


def started() -> None:
    IN_FLIGHT.inc()


def finished() -> None:
    IN_FLIGHT.dec()


def loop_lag(seconds: float) -> None:
    LOOP_LAG.set(seconds)


def api_answered(route: str, status: int, seconds: float | None) -> None:
    """The API answered a request on ``route`` with ``status``, ``seconds`` after it left."""
    if seconds is not None:
        API_DURATION.labels(route).observe(seconds)
    API_REQUESTS.labels(route, f"{status // 100}xx").inc()
    if status == 429:
        API_RATE_LIMITED.labels(route).inc()


def watch_probes(broker_connected: Callable[[], bool], consumer_up: Callable[[], bool]) -> None:
    """Have ``broker_connected`` and ``consumer_up`` read the running service's own state."""
    BROKER_CONNECTED.set_function(lambda: float(broker_connected()))
    CONSUMER_UP.set_function(lambda: float(consumer_up()))


def watch_token(expires_in: Callable[[], float]) -> None:
    """Have ``token_expires_in_seconds`` read the SCX client's token (0: none held)."""
    TOKEN_EXPIRES_IN.set_function(expires_in)


# --- hooks for the events bridge (scx-forwarder events) ------------------------------
# ``event_type`` is the SCX ``type`` as received ("Seller:Ticket.Reply"); event_type_label
# bounds it. ``lock`` is EVENTS_LOCK_NAME.


def events_poller_active(lock: str, active: bool) -> None:
    """The bridge took (True) or lost/left (False) the poller lock; standbys report False."""
    EVENTS_POLLER_ACTIVE.labels(lock).set(float(active))


def events_poll_succeeded(lock: str) -> None:
    """A ``GET /v1/channel/event`` answered 2xx, with or without events."""
    EVENTS_LAST_POLL_SUCCESS.labels(lock).set(time.time())


def events_poll_failed(error: object) -> None:
    """A poll failed (no answer, 5xx, 429, circuit open ...); ``error`` as text or exception."""
    EVENTS_POLL_ERRORS.labels(reason_label(str(error))).inc()


def event_polled(event_type: object) -> None:
    """One event of a polled page, before anything is published for it."""
    EVENTS_POLLED.labels(event_type_label(event_type)).inc()


def event_published(event_type: object, created_at: datetime | None = None) -> None:
    """The broker confirmed every message of one event; ``created_at`` is its SCX createdAt."""
    label = event_type_label(event_type)
    EVENTS_PUBLISHED.labels(label).inc()
    if created_at is not None:
        if created_at.tzinfo is None:
            created_at = created_at.replace(tzinfo=UTC)
        delay = (datetime.now(UTC) - created_at).total_seconds()
        EVENTS_PUBLISH_DELAY.labels(label).observe(max(0.0, delay))


def events_acknowledged(event_types: Iterable[object]) -> None:
    """One ``DELETE /v1/channel/event`` answered 2xx for events of these types (one per id)."""
    for event_type in event_types:
        EVENTS_ACKNOWLEDGED.labels(event_type_label(event_type)).inc()


def event_unrouted(
    event_type: object, reason: Literal["unroutable", "unmappable", "refused"]
) -> None:
    """An event's message went to EVENTS_UNROUTED_QUEUE (the broker confirmed it there)."""
    EVENTS_UNROUTED.labels(event_type_label(event_type), reason).inc()


def event_unpublishable(event_type: object) -> None:
    """The broker refused every copy of an event, even to the unrouted queue."""
    EVENTS_UNPUBLISHABLE.labels(event_type_label(event_type)).inc()


def event_attachment_not_delivered(event_type: object) -> None:
    """A reply was published with one of its files marked not delivered."""
    EVENTS_ATTACHMENTS_NOT_DELIVERED.labels(event_type_label(event_type)).inc()


def event_without_id() -> None:
    """An event without an ``id``: it cannot be acknowledged; logged and skipped."""
    EVENTS_WITHOUT_ID.inc()
