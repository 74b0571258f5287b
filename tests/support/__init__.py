"""Helpers the tests share, by topic; fixtures live in the conftest.py files.

- ``endpoints``: where the real RabbitMQ and Redis are, the emulator's refresh token.
- ``polling``: ``wait_for``, a condition polled against a deadline (no fixed sleeps).
- ``broker``: a test's own ``Names``; ``publish``, ``collect``, ``queue_depth``, ``rabbitmqctl``.
- ``settings``, ``forwarder``: settings for a test's queues; the in-process worker's handle.
- ``processes``: ``python -m worker`` as a child process (``spawn``, ``cli``).
- ``events``, ``examples``, ``mappers``: ticket events, the reference ticket, mapper hooks.
- ``bridge``, ``outcomes``, ``metrics``, ``scx``, ``contract``: per-package helpers.
- ``proxy``, ``fileserver``, ``kustomize``, ``pacing_sim``: stand-ins and simulators.
"""
