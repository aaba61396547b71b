"""CPU of each thread of a process: `python -m benchmarks.thread_cpu [--after S] SECONDS OUT.json PID`.

From the scheduler's own run time of each thread (/proc/<pid>/task/<tid>/schedstat, in ns),
not from the per-tick accounting behind `os.times` and /proc/<pid>/stat, which charges whole
4 ms ticks to whatever runs when one fires: exact for threads that run in short bursts, as an
event loop does. Threads are named as the OS knows them (the daemon names its writer stages);
the main thread is "MainThread". Linux only.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["ThreadCPU", "sample", "thread_cpu"]


@dataclass(frozen=True, slots=True)
class ThreadCPU:
    tid: int
    name: str
    cores: float  # CPU seconds per second of the window
    wakeups_per_s: float  # voluntary context switches: the thread slept and was woken
    faults_per_s: float  # minor page faults: memory touched for the first time since it was mapped


def sample(pid: int) -> dict[int, tuple[str, float, int, int]]:
    """Per thread now: (name, CPU seconds, voluntary switches, minor faults); threads that end
    meanwhile are left out."""
    out: dict[int, tuple[str, float, int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            run_ns = int((task / "schedstat").read_text().split()[0])
            name = (task / "comm").read_text().strip()
            status = (task / "status").read_text()
            # After the name in parentheses (which may hold spaces): state is field 3, minflt 10.
            faults = int((task / "stat").read_text().rpartition(")")[2].split()[7])
        except (OSError, ValueError, IndexError):
            continue
        switches = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("voluntary_"))
        tid = int(task.name)
        out[tid] = ("MainThread" if tid == pid else name, run_ns / 1e9, switches, faults)
    return out


def thread_cpu(pid: int, seconds: float) -> list[ThreadCPU]:
    """Each thread's share of a core over the next `seconds`, busiest first."""
    before, start = sample(pid), time.monotonic()
    time.sleep(seconds)
    after, elapsed = sample(pid), time.monotonic() - start
    rows = []
    for tid, (name, cpu, switches, faults) in after.items():
        _, cpu0, switches0, faults0 = before.get(tid, (name, 0.0, 0, 0))
        rates = ((cpu - cpu0) / elapsed, (switches - switches0) / elapsed, (faults - faults0) / elapsed)
        rows.append(ThreadCPU(tid, name, *rates))
    return sorted(rows, key=lambda r: -r.cores)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.thread_cpu", description=__doc__)
    parser.add_argument("--after", type=float, default=0.0, help="seconds to wait first (warm-up)")
    parser.add_argument("seconds", type=float)
    parser.add_argument("out", type=Path)
    parser.add_argument("pid", type=int)
    args = parser.parse_args(argv)
    time.sleep(args.after)
    args.out.write_text(json.dumps([asdict(r) for r in thread_cpu(args.pid, args.seconds)]))


if __name__ == "__main__":
    main()
