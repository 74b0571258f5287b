"""Operator tools: ``check``, ``dlq``, ``publish`` and ``sample``."""
