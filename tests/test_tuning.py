"""Process tuning: which allocator Arrow's C++ code (Parquet's writer) takes its memory from, and
the GC's clock."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# In a fresh process: pyarrow's Python calls allocate from mimalloc, then one Parquet write; how
# much the glibc ("system") pool ever held tells whether the writer's own buffers came from it.
_WRITE_AND_REPORT = textwrap.dedent(
    """
    import sys
    {before}
    import pyarrow as pa, pyarrow.parquet as pq
    pa.set_memory_pool(pa.mimalloc_memory_pool())
    table = pa.table({{"x": pa.array(range(200_000)), "s": pa.array([str(i) for i in range(200_000)])}})
    pq.write_table(table, pa.BufferOutputStream())
    print(pa.system_memory_pool().max_memory())
    """
)


def _system_pool_peak(before: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-c", _WRITE_AND_REPORT.format(before=before)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(out.stdout.strip())


def test_parquet_writer_allocates_from_glibc_once_chosen_before_pyarrow_loads():
    pytest.importorskip("pyarrow")
    chosen = _system_pool_peak("from ingest.tuning import choose_arrow_allocator; choose_arrow_allocator()")
    assert chosen > 1_000_000  # the writer's column buffers: MBs for 200k rows
    assert _system_pool_peak("") == 0  # without it they come from Arrow's default, mimalloc


def test_the_ingest_command_chooses_it_before_loading_the_cli():
    """`python -m ingest` and the `ingest` script both start in run(): pyarrow is not loaded yet."""
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    env["PYTHONPATH"] = str(ROOT)
    code = textwrap.dedent(
        """
        import os, sys
        import ingest.__main__ as entry
        before = "pyarrow" in sys.modules
        sys.argv = ["ingest", "--help"]
        try:
            entry.run()
        except SystemExit:
            pass
        print(before, os.environ.get("ARROW_DEFAULT_MEMORY_POOL"), file=sys.stderr)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stderr.strip().splitlines()[-1] == "False system", out.stderr


def test_the_daemon_collects_reference_cycles_on_a_clock():
    """tune_process sets the GC to wait for 100,000 more tracked objects than were freed, which a
    daemon in its steady state may not reach for hours; collect_cycles collects them anyway."""
    code = textwrap.dedent(
        """
        import asyncio, gc, weakref
        from ingest.tuning import collect_cycles, tune_process

        class Node:
            pass

        def cycle():
            node = Node()
            node.me = node
            return weakref.ref(node)

        async def main():
            tune_process()
            task = asyncio.create_task(collect_cycles(1.0))
            await asyncio.sleep(0)  # it freezes what is there: the cycle comes after
            gone = cycle()
            churn = [[i] for i in range(50_000)]  # allocated and freed: the GC's count stays low
            del churn
            await asyncio.sleep(0.2)
            before = gone() is None
            await asyncio.sleep(1.5)
            task.cancel()
            print(before, gone() is None)

        asyncio.run(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "True"], out.stderr
