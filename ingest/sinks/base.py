"""The contract of a sink: open once, write Arrow tables of declared datasets, close."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import pyarrow as pa

from ingest.schema import Dataset

__all__ = ["Sink"]


class Sink(Protocol):
    """Called from a worker thread, one write at a time; a failed write raises and is retried whole.

    Idempotence comes from journal positions: a sink remembers, durably and atomically with the
    rows, the last position it holds per dataset (`checkpoint`), and the writer never hands it
    rows at or below that, so replaying the journal after a crash stores nothing twice.

    A sink may hold written rows to commit them in larger batches (`holding`); the writer keeps
    their journal frames until `commit()` made them durable, which it calls when
    `commit_due_in()` says so, and at the end.
    """

    name: str

    def open(self, datasets: Iterable[Dataset]) -> None: ...

    def checkpoint(self, dataset: str) -> int:
        """The highest journal position stored for this dataset (0: none)."""
        ...

    def write(self, dataset: Dataset, table: pa.Table, first: int, last: int) -> list[str]:
        """Write every row of `table` (journal positions first..last); return files created."""
        ...

    @property
    def holding(self) -> bool:
        """Rows written but not durable yet."""
        ...

    @property
    def held_bytes(self) -> int:
        """Memory the held rows take (read only while `holding`)."""
        ...

    def commit_due_in(self) -> float | None:
        """Seconds until held rows must be committed (None: nothing held)."""
        ...

    def commit(self) -> None:
        """Make every held row durable now."""
        ...

    def close(self) -> None: ...
