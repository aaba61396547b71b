"""What provider protocols emit: plain values, no behaviour, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Event",
    "FatalError",
    "Gap",
    "Notice",
    "Reconnect",
    "Rejected",
    "Rows",
    "SubscriptionAcked",
    "SubscriptionFailed",
]


@dataclass(slots=True)
class Rows:
    """Records of one dataset from one frame (or a run of frames, see positions), each kept as
    its raw JSON bytes.

    Decoding into columns happens a flush at a time (see arrow_batch), not per frame.
    """

    provider: str
    dataset: str
    subscription: str
    records: list[bytes]
    received_at: int  # ns since epoch, UTC
    context: Mapping[str, Any] = field(default_factory=dict)  # envelope values for context columns
    is_reorg: bool = False  # envelope-level reorg flag (ORed with the payload's)
    raw: list[bytes] | None = None  # the records as received, where `records` were re-keyed
    position: int = 0  # journal position of the frame (0: not journaled)
    # Where the records came from several frames of one socket read, one record each (a run
    # of trades, say): each record's frame position. None: every record is from `position`.
    positions: list[int] | None = None

    @property
    def last_position(self) -> int:
        return self.positions[-1] if self.positions else self.position

    def join(self, record: bytes, position: int) -> None:
        """Take the record of a later frame of the same read and stream (see positions)."""
        self.records.append(record)
        if self.positions is None:
            self.positions = [self.position]
        self.positions.append(position)


@dataclass(slots=True)
class Rejected:
    """A frame or record that could not be read: it goes to quarantine, never away."""

    provider: str
    raw: bytes
    reason: str
    received_at: int
    subscription: str = ""
    dataset: str = ""
    position: int = 0  # journal position of the frame it came from


@dataclass(frozen=True, slots=True)
class SubscriptionAcked:
    subscription: str


@dataclass(frozen=True, slots=True)
class SubscriptionFailed:
    """The provider refused one subscription; the others go on."""

    subscription: str
    message: str
    retryable: bool


@dataclass(slots=True)
class Gap:
    """A hole in what was received: a disconnect, or a jump in sequence or block numbers."""

    provider: str
    subscription: str
    kind: str  # disconnected | down (the daemon was not running) | sequence | block
    started_at: int  # ns: last known good
    ended_at: int  # ns: first known good again
    stream: str = ""
    expected: int | None = None
    received: int | None = None
    position: int = 0


@dataclass(frozen=True, slots=True)
class Notice:
    """Something worth a log line that changes nothing (a provider warning, a restarted stream)."""

    subscription: str
    message: str


@dataclass(frozen=True, slots=True)
class Reconnect:
    """The provider asked for (or the protocol needs) a fresh connection: at once, or, with
    `retry_after` (seconds), as a lost connection that waits at least that long (a plan's limit)."""

    reason: str
    retry_after: float = 0.0


@dataclass(frozen=True, slots=True)
class FatalError:
    """The provider said something reconnecting will not fix (bad key): stop this collector.

    `auth`: it refused the credentials. A token from an OAuth endpoint is then replaced once
    before the refusal counts (the driver's rule for refusals after the upgrade)."""

    reason: str
    auth: bool = False


Event = Rows | Rejected | Gap | SubscriptionAcked | SubscriptionFailed | Notice | Reconnect | FatalError
