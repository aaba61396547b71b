"""The analysis notebook runs, headless, against data the emulators produced, so it never rots."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from ingest.app import Daemon
from ingest.config import load_config

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "analysis.ipynb"


async def test_the_analysis_notebook_runs_on_emulator_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("BLOCKDB_API_KEY", "BITQUERY_TOKEN", "COINAPI_KEY", "HELIUS_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    await Daemon(load_config(None)).run(duration=6.0)  # the demo: all four providers, reorgs included
    monkeypatch.setenv("INGEST_DATA", str(tmp_path / "data"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    resources = {"metadata": {"path": str(tmp_path)}}
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources=resources)
    await client.async_execute()  # raises CellExecutionError on any failing cell
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs)
    assert "first_height" in text and "seconds_missing" in text and "trades" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # trade prices and block times
