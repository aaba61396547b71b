#!/usr/bin/env python3
"""Bootstrap, then hand over: `python run.py [VERB ...]` on a machine with only Python 3.11.

Creates .venv on first use, installs the project into it (and the test extras for `test`),
re-installs only when pyproject.toml changes, then runs `python -m ingest VERB ...` (the
default verb is `run`: the daemon against the local emulators), the test suite, or the
benchmarks (`python run.py bench`, which installs the `bench` extra).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def _stamp(extras: str) -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    return f"{digest}-{extras}-{sys.version_info.major}.{sys.version_info.minor}"


def _ensure_venv(extras: str) -> None:
    stamp_file = VENV / ".installed"
    wanted = _stamp(extras)
    installed = stamp_file.read_text().split() if stamp_file.exists() else []
    # A test or bench install includes everything a plain one has, so it satisfies `run` as well.
    if wanted in installed or (extras == "" and any(_stamp(e) in installed for e in ("test", "bench"))):
        return
    if sys.version_info < (3, 11):  # noqa: UP036 - run.py starts on whatever python the user has
        sys.exit(f"Python 3.11 or newer is needed (this is {sys.version.split()[0]})")
    if not PYTHON.exists():
        print("creating .venv ...", file=sys.stderr, flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    target = f".[{extras}]" if extras else "."
    print(
        f"installing {target} into .venv (once; again only when pyproject.toml changes) ...",
        file=sys.stderr,
        flush=True,
    )
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], cwd=ROOT, check=False)
    result = subprocess.run([*pip, "-e", target], cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"installing {target} failed (pip exit code {result.returncode})")
    stamp_file.write_text(" ".join([*installed, wanted]))


def main(argv: list[str]) -> int:
    verb = argv[0] if argv else "run"
    if verb == "test":
        _ensure_venv("test")
        return subprocess.call([str(PYTHON), "-m", "pytest", *argv[1:]], cwd=ROOT)
    if verb == "bench":
        _ensure_venv("bench")
        return subprocess.call([str(PYTHON), "-m", "ingest", "bench", *argv[1:]], cwd=ROOT)
    _ensure_venv("")
    args = argv if argv and not argv[0].startswith("-") else ["run", *argv]
    return subprocess.call([str(PYTHON), "-m", "ingest", *args], cwd=os.getcwd())


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
