"""run.py's hand-over to `python -m ingest`: which arguments reach which verb."""

from __future__ import annotations

import subprocess
import sys

from run import ingest_args


def test_options_alone_are_the_daemons_and_help_lists_the_verbs():
    assert ingest_args([]) == ["run"]
    assert ingest_args(["--duration", "20"]) == ["run", "--duration", "20"]
    assert ingest_args(["query", "SELECT 1"]) == ["query", "SELECT 1"]
    assert ingest_args(["--help"]) == ["--help"]
    assert ingest_args(["-h"]) == ["-h"]


def test_the_verbs_help_names_every_verb():
    out = subprocess.run(
        [sys.executable, "-m", "ingest", *ingest_args(["--help"])], capture_output=True, text=True, check=True
    ).stdout
    for verb in ("run", "query", "reconcile", "replay", "compact", "status", "emulate"):
        assert verb in out
