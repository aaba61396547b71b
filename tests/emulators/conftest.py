"""Fixtures for emulator tests: started emulators that always stop, and a plain aiohttp client session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from ingest.emulators.blockdb import BlockDBEmulator

StartBlockDB = Callable[..., Awaitable[BlockDBEmulator]]


@pytest.fixture
async def blockdb() -> AsyncIterator[StartBlockDB]:
    """Start BlockDB emulators on 127.0.0.1:0 (fast blocks by default) and stop them after the test."""
    started: list[BlockDBEmulator] = []

    async def start(**kwargs: Any) -> BlockDBEmulator:
        kwargs.setdefault("block_interval", 0.02)
        emulator = BlockDBEmulator(**kwargs)
        await emulator.start()
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        await emulator.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session; closed after the test so no connector leaks."""
    async with aiohttp.ClientSession() as client_session:
        yield client_session
