"""Process tuning for the long-running daemon: the cyclic GC and the allocators.

Both are measured (benchmarks/HISTORY.md), and both only change when memory is collected or
handed back, never what the daemon computes.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import os
import sys
from collections.abc import Callable

__all__ = ["GC_PERIOD_SECONDS", "choose_arrow_allocator", "collect_cycles", "tune_process"]

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 64 << 20
GC_PERIOD_SECONDS = 60.0  # how often the daemon collects reference cycles (collect_cycles)


def choose_arrow_allocator() -> None:
    """Make glibc Arrow's allocator in C++ too; call before pyarrow is first imported.

    `_tune_allocators` sets the pool pyarrow's Python calls use, but Arrow's C++ default pool is
    chosen once, when libarrow loads (ARROW_DEFAULT_MEMORY_POOL, else mimalloc), and Parquet's
    writer takes its column buffers from that one. mimalloc hands freed pages back to the OS
    within milliseconds, so each file's buffers were faulted in afresh (~3.5 us a 4 KiB page on
    these VMs). Measured at 20k msg/s of CoinAPI trades: the Parquet thread's CPU 2.4-2.7 ->
    1.8-2.1 us a message, its page faults 1,100 -> 500 a second.
    """
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")


def tune_process() -> Callable[[], None]:
    """Tune the GC and the allocators for the daemon; returns what undoes the GC part at exit."""
    _tune_allocators()
    # The buffers hold tens of thousands of small objects between flushes; with the default
    # thresholds the cyclic GC rescans them over and over (measured: ~0.8 us of every frame's
    # ~3.5 us). The daemon makes few cycles, so collect young objects rarely and never rescan
    # what start-up allocated.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    # Frozen objects are never freed: duckdb's bindings report them as leaks at exit.
    return gc.unfreeze


async def collect_cycles(period: float = GC_PERIOD_SECONDS) -> None:
    """Collect reference cycles every `period` seconds, for as long as the daemon runs.

    The threshold above counts tracked objects allocated minus those freed. In a steady state
    the buffers free as many as they take, so only garbage left in cycles moves it, slowly: a
    collection would come once ~100,000 such objects had piled up. The writer made ~40 at
    every sink write (tenacity's retrying state, now made only after a failure): ten minutes at
    full speed ended with ~70,000 of them, and RSS rising. The writer's path now makes none
    (tests/test_writer.py); this clock is for the rest (reconnects, errors). A collection walks
    what is not frozen, mostly the buffered frames: 5-60 ms of CPU at full speed.
    """
    gc.freeze()  # what was imported and built since tune_process: never rescanned either
    while True:
        await asyncio.sleep(period)
        gc.collect()


def _tune_allocators() -> None:
    """Keep freed memory for the next flush instead of handing it back to the OS.

    Each flush allocates and frees tens of MB (records joined, columns, Parquet pages). By
    default glibc returns large blocks to the OS at once (mmap) and jemalloc after a second, so
    at a flush a second every page was faulted in again, at 2-15 us a 4 KiB page: at 20k msg/s
    that was 8 of the 19 us of CPU per message. Arrow allocates from glibc's heap here, and the
    heap keeps up to 64 MB of free memory: enough for a flush's blocks (256 MB gave no less CPU at
    20k msg/s, and ~50 MB more peak RSS at full speed).
    """
    import pyarrow as pa  # here, not at the top: choose_arrow_allocator runs before pyarrow loads

    pa.set_memory_pool(pa.system_memory_pool())
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): defaults stay
        pass
