"""Shared fixtures: golden frames, the dataset registry, a temporary data directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.schema import Registry, load_registry

FRAMES = Path(__file__).parent / "frames"


def frame(provider: str, name: str) -> bytes:
    """A golden frame from tests/frames/<provider>/<name>.json."""
    return (FRAMES / provider / f"{name}.json").read_bytes()


@pytest.fixture(scope="session")
def registry() -> Registry:
    return load_registry()
