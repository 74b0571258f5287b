"""The peers the worker is measured against: small stand-alone scripts, one process each.

Each reads ``AMQP_URL``, ``BENCH_QUEUE`` (an existing queue, declared by the harness with the
worker's own topology), ``SCX_API_URL`` and ``SCX_REFRESH_TOKEN`` from the environment and
does the same work per message: parse the JSON body, POST it to ``/v1/channel/ticket`` with a
bearer token from ``POST /v1/auth``, ack on 2xx. ``raw_ceiling`` only consumes and acks.
"""
