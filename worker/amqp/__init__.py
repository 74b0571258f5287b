"""The broker side shared by both services: connecting, topology, header names, copies."""
