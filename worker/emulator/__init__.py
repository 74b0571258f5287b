"""A local stand-in for JTL's SCX Channel API (see ``worker.emulator.app``)."""

from worker.emulator.app import DROPPED, Emulator, EmulatorConfig, EmulatorState, serve

__all__ = ["DROPPED", "Emulator", "EmulatorConfig", "EmulatorState", "serve"]
