#!/usr/bin/env python3
"""Bootstrap, then hand over: `python run.py [VERB ...]` on a machine with only Python 3.11.

Creates .venv on first use, installs the project into it (and the test extras for `test`),
re-installs only when pyproject.toml changes, then runs `python -m ingest VERB ...` (the
default verb is `run`: the daemon against the local emulators), the test suite, or the
benchmarks (`python run.py bench`, which installs the `bench` extra).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def _stamp(extras: str) -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    return f"{digest}-{extras}-{_venv_python()}"


def _venv_python() -> str:
    """The .venv's Python as `3.11`, from its pyvenv.cfg; "" when there is none, or its base
    interpreter is gone (an upgrade removed it). The venv's, not that of the python running
    run.py: `python3` may be 3.10 beside a .venv that `python3.11 run.py` made."""
    cfg = VENV / "pyvenv.cfg"
    if not cfg.is_file():
        return ""
    pairs = (line.partition("=") for line in cfg.read_text().splitlines())
    keys = {key.strip(): value.strip() for key, _, value in pairs}
    if "executable" in keys and not Path(keys["executable"]).exists():
        return ""
    return ".".join(keys.get("version", "").split(".")[:2])


def _installed() -> list[str]:
    stamp_file = VENV / ".installed"
    return stamp_file.read_text().split() if stamp_file.exists() else []


def _ready(extras: str, installed: list[str]) -> bool:
    # A test or bench install includes everything a plain one has, so it satisfies `run` as well.
    return _stamp(extras) in installed or (
        extras == "" and any(_stamp(e) in installed for e in ("test", "bench"))
    )


@contextlib.contextmanager
def _one_setup_at_a_time() -> Iterator[None]:
    """Two run.py started together on a fresh clone (the daemon in one terminal, a query in
    another) each cleared and filled the same .venv: both failed, and left it broken. The second
    now waits for the first (a lock on the repository's directory: nothing to clean up)."""
    if os.name == "nt":
        yield
        return
    import fcntl

    fd = os.open(ROOT, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("waiting for another run.py setting up .venv ...", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: as before
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def _ensure_venv(extras: str) -> None:
    if _ready(extras, _installed()):
        return
    with _one_setup_at_a_time():
        installed = _installed()
        if not _ready(extras, installed):  # the run.py this one waited for may have done it
            _install(extras, installed)


def _install(extras: str, installed: list[str]) -> None:
    if not _usable():  # none yet, or one left broken (interrupted while created: no pip)
        if sys.version_info < (3, 11):  # noqa: UP036 - run.py starts on whatever python the user has
            sys.exit(f"Python 3.11 or newer is needed (this is {sys.version.split()[0]})")
        print("creating .venv ...", file=sys.stderr, flush=True)
        try:
            venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        except (OSError, subprocess.CalledProcessError) as exc:
            sys.exit(f"creating .venv failed ({exc}); on Debian/Ubuntu: apt install python3-venv")
        installed = []
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
    (VENV / ".installed").write_text(" ".join([*installed, _stamp(extras)]))


def _usable() -> bool:
    """The .venv's python runs and has pip."""
    if not PYTHON.exists():
        return False
    check = [str(PYTHON), "-m", "pip", "--version"]
    return subprocess.run(check, capture_output=True, check=False).returncode == 0


def _hand_over(args: list[str]) -> int:
    """Run `.venv`'s python with `args` in place of this process.

    Replaced, not waited on: Ctrl-C and SIGTERM then reach the daemon itself, which drains and
    prints its summary. A parent waiting on it would be interrupted too, and subprocess kills its
    child 0.25 s after a KeyboardInterrupt (or leaves it orphaned on SIGTERM).
    """
    command = [str(PYTHON), *args]
    if os.name == "nt":  # no exec there that keeps the console's process
        return subprocess.call(command)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
    return 0  # not reached


def main(argv: list[str]) -> int:
    verb = argv[0] if argv else "run"
    if verb == "test":
        _ensure_venv("test")
        os.chdir(ROOT)
        return _hand_over(["-m", "pytest", *argv[1:]])
    if verb == "bench":
        _ensure_venv("bench")
        os.chdir(ROOT)
        return _hand_over(["-m", "ingest", "bench", *argv[1:]])
    _ensure_venv("")
    return _hand_over(["-m", "ingest", *ingest_args(argv)])


def ingest_args(argv: list[str]) -> list[str]:
    """`python run.py ARGS` as `python -m ingest` takes them: options alone are the daemon's
    (`run`), but `--help` lists the verbs."""
    if argv and (not argv[0].startswith("-") or argv[0] in ("-h", "--help")):
        return argv
    return ["run", *argv]


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
