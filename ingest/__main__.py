"""`python -m ingest VERB`, and the `ingest` command."""

from __future__ import annotations

import sys

from ingest.tuning import choose_arrow_allocator


def run() -> int:
    choose_arrow_allocator()  # before anything imports pyarrow
    from ingest.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
