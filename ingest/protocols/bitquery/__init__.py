"""Bitquery: GraphQL subscriptions over WebSocket (graphql-ws and graphql-transport-ws)."""

from __future__ import annotations

from ingest.protocols.bitquery.query import DATASETS, GENERIC_DATASET, Cube, analyse
from ingest.protocols.bitquery.session import LEGACY, TRANSPORT, BitqueryProtocol, BitquerySubscription

__all__ = [
    "DATASETS",
    "GENERIC_DATASET",
    "LEGACY",
    "TRANSPORT",
    "BitqueryProtocol",
    "BitquerySubscription",
    "Cube",
    "analyse",
]
