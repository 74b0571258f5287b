"""Observability: logging set-up, metric declarations, bounded labels, the probe server, tracing.

Imports only ``worker.core``; the things it observes report to it, never the other way.
"""
