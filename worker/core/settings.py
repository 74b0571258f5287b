"""Configuration from the environment, validated once at start-up.

Every setting is an environment variable, described by its field here (``make reference``
turns them into docs/reference/settings.md). A bad value stops the worker before it touches
the broker, with one line per bad variable (``ConfigError``), and exit code 2.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from yarl import URL

SANDBOX_URL = "https://scx-sbx.api.jtl-software.com"

PositiveFloat = Annotated[float, Field(gt=0)]

# What POST /v1/channel/ticket/attachment takes at most: 16 MiB.
MAX_ATTACHMENT_BYTES = 16 * 1024 * 1024


class ConfigError(Exception):
    """The environment does not describe a runnable worker; the message lists every problem."""


class Settings(BaseSettings):
    """The worker's settings. Field names are the environment variables, upper-cased."""

    model_config = SettingsConfigDict(case_sensitive=False, frozen=True, extra="ignore")

    # --- broker -----------------------------------------------------------------------
    # One URL, or the nodes of a cluster separated by commas (worker.amqp.broker tries them in
    # turn); every password stays secret.
    amqp_url: SecretStr = Field(
        SecretStr("amqp://guest:guest@localhost:5672/"),
        description="Broker URL (`amqp://` or `amqps://`); for a cluster, every node's URL "
        "separated by commas, tried in turn (same virtual host in each).",
    )
    # The broker URL (it holds the password) from a file, e.g. a mounted Secret; read and
    # validated as AMQP_URL at start-up. Set one of the two.
    amqp_url_file: Path | None = Field(
        None,
        description="File holding the broker URL or list (a mounted secret), read at start-up "
        "and checked like `AMQP_URL`; set one of the two.",
    )
    amqp_exchange: str = Field(
        "marketplace",
        min_length=1,
        description="Durable topic exchange the marketplace publishes to.",
    )
    amqp_binding_key: str = Field(
        "ticket.created", min_length=1, description="Routing key bound to the work queue."
    )
    # Short enough for the derived names (<queue>.retry.600s, <queue>.dlq) to fit in 255.
    amqp_queue: str = Field(
        "scx.tickets",
        min_length=1,
        max_length=220,
        description="Work queue; the dead-letter queue is `<AMQP_QUEUE>.dlq`.",
    )
    amqp_queue_type: Literal["quorum", "classic"] = Field(
        "quorum", description="`quorum`, or `classic` for an existing classic queue."
    )
    # A message returned this many times (worker crash, nack) goes to the DLQ by the
    # broker's own hand, so a poison message cannot crash-loop the fleet forever.
    amqp_delivery_limit: int = Field(
        5,
        ge=1,
        le=1000,
        description="Quorum queues only: returns after which the broker dead-letters a message.",
    )
    # Defaults chosen with `make bench` (docs/BENCHMARKS.md, the tuning guide): on the aiohttp
    # transport 32 concurrent requests cost no more CPU per message than 16 and double
    # what one process can have in flight against a slow API; prefetch = 2 x concurrency.
    amqp_prefetch: int = Field(
        64,
        ge=1,
        le=65535,
        description="Unacked messages the broker hands to one worker; also the bound on "
        "duplicates per worker per lost connection.",
    )

    # --- worker -----------------------------------------------------------------------
    worker_concurrency: int = Field(32, ge=1, le=10_000, description="Messages worked on at once.")
    worker_shutdown_grace: PositiveFloat = Field(
        25.0, description="Seconds in-flight messages get to finish on SIGTERM."
    )
    worker_mapper: str | None = Field(
        None,
        description="`module:function` of your own event mapping (same as `run --mapper`).",
    )
    # The delay stage: a message whose in-process retries ran out waits this long in
    # <queue>.retry.<N>s (the n-th time: the n-th delay, then the last one again) before
    # it is tried again, until WORKER_RETRY_MAX_AGE after its first failure. Empty: none.
    worker_retry_delays: Annotated[tuple[PositiveFloat, ...], NoDecode] = Field(
        (10.0, 60.0, 600.0),
        description="Seconds in the delay queues, comma-separated: the n-th delay for the "
        "n-th time, then the last one again; empty turns the delay stage off.",
    )
    worker_retry_max_age: PositiveFloat = Field(
        24 * 3600.0,
        description="Seconds after its first failure that a still-failing message is "
        "dead-lettered as `exhausted`.",
    )
    # Messages downloading attachments or uploading them at once (each holds its files on
    # disk, at most ATTACHMENT_MAX_BYTES each); tickets without files do not count.
    worker_attachment_concurrency: int = Field(
        4,
        ge=1,
        le=1000,
        description="Messages downloading or uploading attachment files at once (each holds "
        "its files on disk until its last upload).",
    )

    # --- SCX API ----------------------------------------------------------------------
    scx_api_url: str = Field(
        SANDBOX_URL,
        description="The API's base URL; the default is the sandbox, production is "
        "`https://scx.api.jtl-software.com`.",
    )
    scx_refresh_token: SecretStr | None = Field(
        None,
        description="The channel's refresh token; this or `SCX_REFRESH_TOKEN_FILE` is "
        "required for `run` and `events`.",
    )
    scx_refresh_token_file: Path | None = Field(
        None, description="File holding the refresh token (a mounted secret)."
    )
    # Pacing per route category (worker/scx/routes.py: JTL's windows, one per category,
    # shared by every replica of a credential): requests per minute this process keeps to.
    # 0 turns a category's pacing off (a 429 still pauses that category).
    scx_max_requests_per_minute: float = Field(
        60,
        ge=0,
        description="Client-side pacing of the channel category (`/v1/channel*`: tickets, "
        "uploads, downloads), per process; keep it at the credential's whole limit on every "
        "replica (the rate-limit headers share it out); `0` turns pacing off.",
    )
    scx_event_requests_per_minute: float = Field(
        240,
        ge=0,
        description="Pacing of the event category (`/v1/channel/event*`: the bridge's polls "
        "and acknowledgements); JTL's window is 240 per 60 s.",
    )
    scx_order_requests_per_minute: float = Field(
        600, ge=0, description="Pacing of the order category (`/v1/channel/order*`)."
    )
    scx_offer_requests_per_minute: float = Field(
        1500, ge=0, description="Pacing of the offer category (`/v1/channel/offer*`)."
    )
    scx_default_requests_per_minute: float = Field(
        10,
        ge=0,
        description="Pacing of every other route (`/v1/auth` among them); JTL's window is 10 "
        "per 60 s.",
    )
    scx_rate_counting: Literal["auto", "fixed", "sliding", "bucket"] = Field(
        "auto",
        description="How the API counts its windows: `auto` learns it from the "
        "`X-RateLimit-*` answers; `fixed` (windows that reset), `sliding` (a call counts for "
        "one interval) or `bucket` (a token bucket) for a user who knows.",
    )
    scx_connect_timeout: PositiveFloat = Field(
        5.0, description="Seconds to open a connection to the API."
    )
    scx_request_timeout: PositiveFloat = Field(
        30.0, description="Seconds for reading, writing and waiting for a pooled connection."
    )
    scx_pool_size: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="Keep-alive connections to the API; unset: `WORKER_CONCURRENCY`.",
    )
    scx_token_refresh_margin: float = Field(
        60.0,
        ge=0,
        description="Refresh the access token this many seconds before it expires (at most "
        "a fifth of its lifetime).",
    )
    # The in-process budget is short on purpose: a message that keeps failing moves to
    # the delay stage instead of occupying a concurrency slot (and memory) for minutes.
    scx_retry_attempts: int = Field(
        5,
        ge=1,
        le=100,
        description="In-process attempts per delivery for transient failures.",
    )
    scx_retry_budget: PositiveFloat = Field(
        30.0,
        description="Seconds per delivery for all attempts and waits, then the delay stage.",
    )
    scx_retry_initial_wait: PositiveFloat = Field(
        0.5, description="First backoff ceiling in seconds (doubles per attempt)."
    )
    scx_retry_max_wait: PositiveFloat = Field(
        10.0,
        description="Largest backoff in seconds (a server's `Retry-After` may exceed it).",
    )
    scx_breaker_failures: int = Field(
        5,
        ge=1,
        le=10_000,
        description="Transient failures in a row that open the circuit breaker.",
    )
    scx_breaker_cooldown: PositiveFloat = Field(
        5.0, description="Seconds the breaker stays open before one probe call."
    )
    scx_breaker_max_cooldown: PositiveFloat = Field(
        60.0, description="Longest open period (it doubles after each failed probe)."
    )

    # --- attachments (worker/forward/attachments/) ---------------------------------------------
    # URL sources are downloaded only from under these prefixes (comma-separated, compared
    # in normal form, see worker/core/sources.py). Empty: every URL source is refused.
    attachment_allowed_urls: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Comma-separated URL prefixes that attachment `url` sources must start "
        "with, compared in normal form; empty refuses every URL source.",
    )
    # The API takes at most 16 MiB per file; a lower limit is allowed, a higher one is not.
    attachment_max_bytes: int = Field(
        MAX_ATTACHMENT_BYTES,
        ge=1,
        le=MAX_ATTACHMENT_BYTES,
        description="Largest file in bytes (16 MiB, the API's limit; may be lowered, not "
        "raised), checked against `Content-Length` and while streaming.",
    )
    attachment_connect_timeout: PositiveFloat = Field(
        5.0, description="Seconds to open a connection to an attachment source."
    )
    # Longest silence while reading a download (per read, not for the whole file).
    attachment_read_timeout: PositiveFloat = Field(
        30.0, description="Longest silence in seconds while reading a download."
    )
    # One download from its request to its last byte, redirects included.
    attachment_download_timeout: PositiveFloat = Field(
        300.0,
        description="Seconds for one whole download, redirects included (a timeout is transient).",
    )

    # --- state record (Redis) ---------------------------------------------------------
    # Optional: record each step done (ticket created, file uploaded) so a redelivered
    # message skips it (worker/forward/progress.py). A URL such as redis://:password@host:6379/0.
    worker_state_redis_url: SecretStr | None = Field(
        None,
        description="`redis://[:password@]host:6379/0` (or `rediss://`): the optional progress "
        "record, so a redelivered message skips the steps done; unreachable means retry, "
        "then the delay stage. Unset: off.",
    )
    # How long a record is kept (seconds): longer than a message can live in the delay
    # stage (WORKER_RETRY_MAX_AGE) and the DLQ before a replay.
    worker_state_ttl: int = Field(
        7 * 24 * 3600,
        ge=60,
        description="Seconds a progress record is kept after its last write (7 days).",
    )
    # Keys are <prefix>:<sellerId>:<ticketId>; several deployments can share one Redis.
    worker_state_key_prefix: str = Field(
        "scx-forwarder",
        min_length=1,
        max_length=100,
        description="First part of the record's keys (`<prefix>:<sellerId>:<ticketId>`), for "
        "deployments sharing one Redis.",
    )

    # --- events bridge (scx-forwarder events) -------------------------------------------
    # Events asked for per GET /v1/channel/event; a full page is followed by the next poll
    # at once (paced), a short one by EVENTS_POLL_INTERVAL of waiting.
    events_batch_size: int = Field(
        100,
        ge=1,
        le=1000,
        description="Events asked for per `GET /v1/channel/event`; a full page (this many, "
        "or SCX's cap of 100) is followed by the next poll at once.",
    )
    events_poll_interval: PositiveFloat = Field(
        10.0, description="Seconds between polls when the last page was not full."
    )
    events_ticket_reply_key: str = Field(
        "ticket.replied",
        min_length=1,
        max_length=255,
        description="Routing key of a seller's ticket reply (its files use "
        "`ticket.replied.attachment`).",
    )
    # Messages no queue is bound for, and events that cannot be mapped, are kept here.
    events_unrouted_queue: str = Field(
        "scx.events.unrouted",
        min_length=1,
        max_length=255,
        description="Durable queue for messages no queue is bound for and for unmappable events.",
    )
    # The exclusive queue whose holder is the one replica that polls.
    events_lock_name: str = Field(
        "scx.events.lock",
        min_length=1,
        max_length=255,
        description="Exclusive queue whose holder is the one bridge replica that polls.",
    )
    # SCX gives an event up after 10 deliveries (worker/events/tries.py); 8 at most, to leave
    # SCX's last deliveries.
    events_delivery_tries: int = Field(
        3,
        ge=1,
        le=8,
        description="Deliveries of a seller event after which the bridge publishes what it "
        "can (a reply with a failing file marked not delivered, a refused message as a copy "
        "in `EVENTS_UNROUTED_QUEUE`) and acknowledges it, well before SCX gives it up after 10.",
    )

    # --- outcome events, CloudEvents, tracing -------------------------------------------
    # OpenTelemetry traces (worker.obs.tracing, the `otel` extra): the exporters by name, or none.
    # The SDK and its exporters read the other standard OTEL_* variables themselves.
    otel_traces_exporter: str = Field(
        "none",
        description="Span exporters, comma-separated: `otlp`, `console`, or any other "
        "installed one; `none` (or unset) turns tracing off (needs the `otel` extra).",
    )
    otel_service_name: str | None = Field(
        None,
        description="`service.name` of the spans; unset: a `service.name` in "
        "`OTEL_RESOURCE_ATTRIBUTES`, else `scx-forwarder`.",
    )
    # Publish ticket.forwarded / ticket.dead_lettered to AMQP_EXCHANGE (worker.forward.outcomes).
    worker_outcome_events: bool = Field(
        False,
        description="`1`: publish `ticket.forwarded` / `ticket.dead_lettered` to `AMQP_EXCHANGE`.",
    )

    # --- observability ----------------------------------------------------------------
    # One port serves /metrics, /healthz and /readyz (worker.obs.health); 0 turns it off.
    metrics_port: int = Field(
        9090,
        ge=0,
        le=65535,
        description="Port of `/metrics`, `/healthz` and `/readyz`; `0` turns the server off.",
    )
    # All interfaces by default: the kubelet probes and Prometheus scrapes the pod's IP.
    metrics_host: str = Field(
        "0.0.0.0",  # noqa: S104
        min_length=1,
        description="Address that server binds (`127.0.0.1` keeps it local).",
    )
    # Seconds between the passive declares that export the queues' depths
    # (worker.forward.queue_stats).
    metrics_queue_interval: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="Seconds between the passive declares that export the queues' depths "
        "(`scx_forwarder_queue_messages`).",
    )

    # --- logging ----------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Least severe level logged (any case)."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="`json`, `console`, or `auto` (console on a TTY, else JSON)."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("worker_retry_delays", mode="before")
    @classmethod
    def _delays(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("worker_retry_delays")
    @classmethod
    def _few_delays(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if len(value) > 10:
            raise ValueError("at most 10 delays (each one is a queue)")
        if any(delay < 0.001 for delay in value):
            raise ValueError("each delay must be at least 0.001 s (1 ms, the TTL's unit)")
        return value

    @field_validator("attachment_allowed_urls", mode="before")
    @classmethod
    def _prefixes(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("attachment_allowed_urls")
    @classmethod
    def _valid_prefixes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Imported here: worker.forward.attachments imports this module.
        from worker.core.sources import prefix_url

        for number, prefix in enumerate(value, 1):
            try:
                prefix_url(prefix)
            except ValueError as exc:
                # The number, not the value: a prefix is not a secret, but keep to the rule.
                raise ValueError(f"entry {number}: {exc}") from None
        return value

    @field_validator("otel_service_name", mode="before")
    @classmethod
    def _unset_if_empty(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("otel_traces_exporter")
    @classmethod
    def _exporters(cls, value: str) -> str:
        if not value.strip():
            return "none"
        names = [name.strip().lower() for name in value.split(",")]
        if not all(re.fullmatch(r"[a-z0-9_]+", name) for name in names):
            raise ValueError("must be exporter names separated by commas (console, otlp) or none")
        return ",".join(names)

    @field_validator("amqp_url")
    @classmethod
    def _amqp_url(cls, value: SecretStr) -> SecretStr:
        nodes = split_amqp_urls(value.get_secret_value())
        if not nodes:
            raise ValueError("must look like amqp://user:password@host:5672/vhost")
        for position, url in enumerate(nodes, 1):
            if url.scheme not in ("amqp", "amqps") or not url.host:
                where = f"URL {position} of {len(nodes)} " if len(nodes) > 1 else ""
                raise ValueError(
                    f"{where}must look like amqp://user:password@host:5672/vhost"
                    " (several nodes: separated by commas)"
                )
        if len({_vhost(url) for url in nodes}) > 1:
            # The nodes of one cluster share their virtual hosts: different ones mean a
            # list that mixes brokers, and a failover would land in another vhost's queues.
            raise ValueError("every URL must name the same virtual host")
        return value

    @field_validator("worker_state_redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        url = URL(value.get_secret_value())
        if url.scheme not in ("redis", "rediss", "unix") or not (url.host or url.path):
            raise ValueError("must look like redis://:password@host:6379/0")
        return value

    @field_validator("scx_api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        url = URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http(s) URL such as " + SANDBOX_URL)
        return value.rstrip("/")

    @model_validator(mode="before")
    @classmethod
    def _amqp_url_from_file(cls, data: object) -> object:
        """Read ``AMQP_URL_FILE`` into ``amqp_url``, which then validates it as if it were set.

        Raises with the file's name, never its content (which holds the password).
        """
        if not isinstance(data, dict):
            return data
        path = data.get("amqp_url_file")
        if path is None or path == "":
            return data
        if data.get("amqp_url") is not None:
            raise ValueError("set AMQP_URL or AMQP_URL_FILE, not both")
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ValueError(f"AMQP_URL_FILE: cannot read {path}: {why}") from None
        if not text:
            raise ValueError(f"AMQP_URL_FILE: {path} is empty")
        return {**data, "amqp_url": text}

    @model_validator(mode="after")
    def _outcomes_not_consumed(self) -> Settings:
        # The work queue would receive the worker's own outcome events, dead-letter them as
        # invalid, announce that, receive the announcement...: a loop, refused up front.
        if self.worker_outcome_events:
            for key in ("ticket.forwarded", "ticket.dead_lettered"):
                if topic_matches(self.amqp_binding_key, key):
                    raise ValueError(
                        f"WORKER_OUTCOME_EVENTS: AMQP_BINDING_KEY would bind the work queue "
                        f"to the worker's own {key!r} events"
                    )
        return self

    @model_validator(mode="after")
    def _one_token_source(self) -> Settings:
        if self.scx_refresh_token is not None and self.scx_refresh_token_file is not None:
            raise ValueError("set SCX_REFRESH_TOKEN or SCX_REFRESH_TOKEN_FILE, not both")
        return self

    @property
    def pool_size(self) -> int:
        """Keep-alive connections to the API: one per concurrent request unless set."""
        return self.scx_pool_size or self.worker_concurrency

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.amqp_queue}.dlq"

    @property
    def retry_queues(self) -> dict[str, float]:
        """The delay stage's queues: name -> delay in seconds."""
        return {self.retry_queue(delay): delay for delay in self.worker_retry_delays}

    def retry_queue(self, delay: float) -> str:
        return f"{self.amqp_queue}.retry.{delay:g}s"

    @property
    def amqp_nodes(self) -> tuple[URL, ...]:
        """The broker URLs of ``AMQP_URL`` in their order (several: the nodes of a cluster)."""
        return split_amqp_urls(self.amqp_url.get_secret_value())

    @property
    def amqp_url_redacted(self) -> str:
        """The broker URLs fit for a log line: every password replaced by ``***``."""
        return ",".join(redact_url(url) for url in self.amqp_nodes)

    def scrub(self, text: str) -> str:
        """``text`` with every broker and Redis password in it replaced by ``***`` (for
        error texts)."""
        urls = list(self.amqp_nodes)
        if self.worker_state_redis_url is not None:
            urls.append(URL(self.worker_state_redis_url.get_secret_value()))
        return scrub_passwords(text, urls)

    @property
    def state_redis_url_redacted(self) -> str | None:
        """The state record's Redis URL fit for a log line (password as ``***``)."""
        if self.worker_state_redis_url is None:
            return None
        url = URL(self.worker_state_redis_url.get_secret_value())
        return str(url.with_password("***")) if url.password else str(url)

    def refresh_token(self) -> SecretStr:
        """The refresh token from the variable or the file; ``ConfigError`` if neither works.

        Read when ``run`` starts rather than at validation, so commands that never call the
        API (``emulator``, ``publish``) do not need one.
        """
        if self.scx_refresh_token is not None:
            token = self.scx_refresh_token.get_secret_value().strip()
        elif self.scx_refresh_token_file is not None:
            try:
                token = self.scx_refresh_token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"SCX_REFRESH_TOKEN_FILE: cannot read {self.scx_refresh_token_file}: "
                    f"{exc.strerror}"
                ) from None
        else:
            raise ConfigError("SCX_REFRESH_TOKEN or SCX_REFRESH_TOKEN_FILE is required")
        if not token:
            raise ConfigError("the refresh token is empty")
        return SecretStr(token)


def split_amqp_urls(value: str) -> tuple[URL, ...]:
    """``AMQP_URL`` as URLs: comma-separated, blanks around them ignored.

    A comma inside a password must be written ``%2C`` (as any reserved character in a URL).
    """
    return tuple(URL(part.strip()) for part in value.split(",") if part.strip())


def scrub_passwords(text: str, urls: Iterable[URL]) -> str:
    """``text`` with the password of each URL replaced by ``***``."""
    for url in urls:
        if url.password:
            # As written in AMQP_URL (percent-encoded) and as the client uses it.
            for secret in (quote(url.password, safe=""), url.password):
                text = text.replace(secret, "***")
    return text


def redact_url(url: URL) -> str:
    return str(url.with_password("***")) if url.password else str(url)


def _vhost(url: URL) -> str:
    return url.path[1:] or "/"  # as aiormq reads it: "" and "/" are the default vhost


def topic_matches(pattern: str, key: str) -> bool:
    """Whether a topic exchange routes ``key`` to a binding with ``pattern`` (``*``, ``#``)."""
    words, keys = pattern.split("."), key.split(".")

    def match(i: int, j: int) -> bool:
        if i == len(words):
            return j == len(keys)
        if words[i] == "#":
            return any(match(i + 1, k) for k in range(j, len(keys) + 1))
        if j == len(keys):
            return False
        return words[i] in ("*", keys[j]) and match(i + 1, j + 1)

    return match(0, 0)


def load_settings(**overrides: object) -> Settings:
    """Read the environment; raise ``ConfigError`` naming each bad variable.

    The values themselves are never echoed: a mistyped variable may hold a secret.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_input=False, include_url=False):
            name = "_".join(str(part) for part in error["loc"]).upper() or "settings"
            if name == "AMQP_URL" and _amqp_url_file_set(overrides):
                name = "AMQP_URL (read from AMQP_URL_FILE)"
            lines.append(f"{name}: {error['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def _amqp_url_file_set(overrides: dict[str, object]) -> bool:
    if overrides.get("amqp_url_file"):
        return True
    return any(key.upper() == "AMQP_URL_FILE" and value for key, value in os.environ.items())
