"""The contract of a sink: open once, write Arrow tables of declared datasets, close."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import pyarrow as pa

from ingest.schema import Dataset

__all__ = ["Sink"]


class Sink(Protocol):
    """Called from a worker thread, one write at a time; a failed write raises and is retried whole."""

    name: str

    def open(self, datasets: Iterable[Dataset]) -> None: ...

    def write(self, dataset: Dataset, table: pa.Table) -> list[str]:
        """Write every row of `table`; return what was created (file paths), if anything."""
        ...

    def close(self) -> None: ...
