"""Provider protocols (sans-I/O): the registry of every provider the daemon can collect from."""

from __future__ import annotations

from typing import Any

from ingest.protocols.base import AuthDefaults, ProviderProtocol, SubscriptionSpec
from ingest.protocols.bitquery import BitqueryProtocol
from ingest.protocols.blockdb import BlockDBProtocol
from ingest.protocols.coinapi import CoinAPIProtocol
from ingest.protocols.helius import HeliusProtocol

__all__ = ["PROTOCOLS", "AuthDefaults", "ProviderProtocol", "SubscriptionSpec"]

PROTOCOLS: dict[str, Any] = {
    BlockDBProtocol.kind: BlockDBProtocol,
    BitqueryProtocol.kind: BitqueryProtocol,
    CoinAPIProtocol.kind: CoinAPIProtocol,
    HeliusProtocol.kind: HeliusProtocol,
}
