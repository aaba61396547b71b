"""Emulators: faithful local stand-ins for the providers, sharing no code with ingest.protocols."""

from __future__ import annotations

from ingest.emulators.blockdb import BlockDBEmulator

__all__ = ["EMULATORS", "BlockDBEmulator"]

EMULATORS: dict[str, type] = {"blockdb": BlockDBEmulator}
