"""Emulators: faithful local stand-ins for the providers, sharing no code with ingest.protocols."""

from __future__ import annotations

from typing import Any

from ingest.emulators.bitquery import BitqueryEmulator
from ingest.emulators.blockdb import BlockDBEmulator
from ingest.emulators.coinapi import CoinAPIEmulator
from ingest.emulators.helius import HeliusEmulator

__all__ = ["EMULATORS", "BitqueryEmulator", "BlockDBEmulator", "CoinAPIEmulator", "HeliusEmulator"]

EMULATORS: dict[str, Any] = {
    "bitquery": BitqueryEmulator,
    "blockdb": BlockDBEmulator,
    "coinapi": CoinAPIEmulator,
    "helius": HeliusEmulator,
}
