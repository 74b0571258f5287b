"""The AMQP header names the worker writes and reads: one list, so the consumer, the
delay stage and ``dlq replay`` cannot drift apart.

What each one means is in docs/guides/reliability.md and docs/guides/attachments.md.
"""

from __future__ import annotations

# --- a dead-lettered copy (worker.forward.consumer) ----------------------------------------------
ERROR_KIND = "x-error-kind"
ERROR_REASON = "x-error-reason"
ERROR_DETAIL = "x-error-detail"
ATTEMPTS = "x-attempts"
ORIGINAL_EXCHANGE = "x-original-exchange"
ORIGINAL_ROUTING_KEY = "x-original-routing-key"
ORIGINAL_QUEUE = "x-original-queue"
DEAD_LETTERED_AT = "x-dead-lettered-at"
# Which message of which conversation (worker.forward.identity): sellerId, ticketId and the
# message's identity, so an operator can tell two dead-lettered messages of one ticket apart.
MESSAGE_IDENTITY = "x-scx-message-id"
SELLER_ID = "x-scx-seller-id"
TICKET_ID = "x-scx-ticket-id"

# --- the delay stage ------------------------------------------------------------------------
RETRY_COUNT = "x-retry-count"
FIRST_FAILURE_AT = "x-first-failure-at"
LAST_ERROR = "x-last-error"

# --- what is done already: travels with the message through delays, the DLQ and replays -----
# JSON text {"message": identity, "ticket": bool, "attempted"?: true, "uploaded": [filename]}
# (worker.forward.progress).
PROGRESS = "x-scx-progress"

# --- a seller event's message (worker.events.mapping) ---------------------------------------
SCX_EVENT_ID = "x-scx-event-id"
SCX_EVENT_TYPE = "x-scx-event-type"

# --- dlq replay -----------------------------------------------------------------------------
REPLAY_COUNT = "x-replay-count"

# --- the broker's own ---------------------------------------------------------------------
DELIVERY_COUNT = "x-delivery-count"  # quorum queues count deliveries here
DEATH = "x-death"
FIRST_DEATH_REASON = "x-first-death-reason"
FIRST_DEATH_QUEUE = "x-first-death-queue"
FIRST_DEATH_EXCHANGE = "x-first-death-exchange"
LAST_DEATH_REASON = "x-last-death-reason"
LAST_DEATH_QUEUE = "x-last-death-queue"
LAST_DEATH_EXCHANGE = "x-last-death-exchange"

# What the dead-lettering (ours, the broker's, the delay stage's) added: a replayed message
# starts afresh, as if just published, except for how often it was replayed and for PROGRESS,
# so a replay does only what is missing (a ticket is not created twice, a file not uploaded
# twice).
STRIPPED_ON_REPLAY = frozenset(
    {
        ERROR_KIND,
        ERROR_REASON,
        ERROR_DETAIL,
        ATTEMPTS,
        ORIGINAL_EXCHANGE,
        ORIGINAL_ROUTING_KEY,
        ORIGINAL_QUEUE,
        DEAD_LETTERED_AT,
        MESSAGE_IDENTITY,
        SELLER_ID,
        TICKET_ID,
        DEATH,
        FIRST_DEATH_REASON,
        FIRST_DEATH_QUEUE,
        FIRST_DEATH_EXCHANGE,
        LAST_DEATH_REASON,
        LAST_DEATH_QUEUE,
        LAST_DEATH_EXCHANGE,
        DELIVERY_COUNT,
        RETRY_COUNT,
        FIRST_FAILURE_AT,
        LAST_ERROR,
    }
)
