"""scx-ticket-forwarder: marketplace ticket events from RabbitMQ to JTL's SCX Channel API.

The version is read from the installed package's metadata, here and nowhere else: the CLI's
``--version``, the ``User-Agent`` of every API call and the ``scx_forwarder_build_info``
metric all use ``__version__``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scx-ticket-forwarder")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

USER_AGENT = f"scx-forwarder/{__version__}"
"""Sent with every request to the SCX API, so JTL can tell this client and its version."""
