"""An exclusive lock on a file for as long as a process holds it open (flock, not blocking).

The kernel drops it with the process, so a crash leaves nothing to clean up. What owns a
directory this way: a daemon its journal, a compaction its lake.
"""

from __future__ import annotations

import enum
import fcntl
import os
from pathlib import Path

__all__ = ["Lock", "try_lock"]


class Lock(enum.Enum):
    HELD = "held"  # ours until the descriptor is closed
    BUSY = "busy"  # another open of the file holds it
    UNSUPPORTED = "unsupported"  # the file system refuses locks (NFS without its lock service)


def try_lock(path: str | Path) -> tuple[int, Lock]:
    """Open `path` (made if missing) and try to lock it; the descriptor is the caller's to close,
    which releases the lock. A file another user made is opened for reading: enough to lock."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return fd, Lock.BUSY
    except OSError:
        return fd, Lock.UNSUPPORTED
    return fd, Lock.HELD
