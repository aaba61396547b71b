"""Names the daemon's worker threads for the operating system, not only for Python.

Python names a thread for itself alone: `top -H`, `ps -L`, py-spy's native view and
/proc/<pid>/task/<tid>/comm all show "python" for every thread. With the OS name set, the
writer's stages (ingest-build, ingest-parquet, ingest-duckdb) can be told apart by anyone
watching the daemon, and `python -m benchmarks.profile --threads` can measure each one's CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from functools import cache

__all__ = ["name_os_thread"]

_PR_SET_NAME = 15  # prctl option (linux/prctl.h)
_MAX_BYTES = 15  # the kernel keeps 16 bytes, the terminating NUL included


@cache
def _prctl() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def name_os_thread(name: str) -> None:
    """Give the calling thread `name` (its first 15 bytes) in the OS; nothing where unsupported."""
    prctl = _prctl()
    if prctl is None:
        return
    # A ThreadPoolExecutor whose initializer raises is broken for good: a name is not worth that.
    with contextlib.suppress(Exception):
        prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:_MAX_BYTES]), 0, 0, 0)
