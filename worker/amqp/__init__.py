"""The broker side shared by both services: connecting, topology, header names, copies, and
the one list of broker errors (``errors``)."""
