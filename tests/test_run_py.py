"""run.py's hand-over to `python -m ingest`: which arguments reach which verb."""

from __future__ import annotations

import collections
import hashlib
import os
import subprocess
import sys
import threading

import pytest

import run
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


VersionInfo = collections.namedtuple("VersionInfo", "major minor micro releaselevel serial")


@pytest.mark.parametrize("launcher", [(3, 10, 13), (3, 12, 1)])
def test_a_ready_venv_is_used_whichever_python_starts_run_py(tmp_path, monkeypatch, launcher):
    """`python3.11 run.py` made .venv; `python3 run.py` (3.10 on Ubuntu 22.04) was refused with
    "Python 3.11 or newer is needed", and 3.12 installed everything again: the stamp held the
    version of the python running run.py, not the venv's."""
    venv = tmp_path / ".venv"
    venv.mkdir()
    (venv / "pyvenv.cfg").write_text(f"home = /usr/bin\nversion = 3.11.7\nexecutable = {sys.executable}\n")
    digest = hashlib.sha256((run.ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    (venv / ".installed").write_text(f"{digest}--3.11")
    monkeypatch.setattr(run, "VENV", venv)
    monkeypatch.setattr(sys, "version_info", VersionInfo(*launcher, "final", 0))

    def no_install(*args, **kwargs):
        raise AssertionError(f"nothing to install, but ran {args}")

    monkeypatch.setattr(run.subprocess, "run", no_install)
    run._ensure_venv("")  # neither exits nor installs


def test_a_venv_whose_python_is_gone_is_not_taken_as_installed(tmp_path, monkeypatch):
    venv = tmp_path / ".venv"
    venv.mkdir()
    monkeypatch.setattr(run, "VENV", venv)
    assert run._venv_python() == ""  # none yet
    (venv / "pyvenv.cfg").write_text(f"version = 3.11.7\nexecutable = {tmp_path / 'python3.11'}\n")
    assert run._venv_python() == ""  # an upgrade removed its interpreter: made again
    (venv / "pyvenv.cfg").write_text(f"version = 3.11.7\nexecutable = {sys.executable}\n")
    assert run._venv_python() == "3.11"


def test_a_second_run_py_waits_for_the_first_ones_setup_and_installs_nothing(tmp_path, monkeypatch, capsys):
    """Two started together on a fresh clone each cleared and filled .venv: both failed."""
    fcntl = pytest.importorskip("fcntl")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    venv = tmp_path / ".venv"
    venv.mkdir()
    (venv / "pyvenv.cfg").write_text(f"version = 3.11.7\nexecutable = {sys.executable}\n")
    monkeypatch.setattr(run, "ROOT", tmp_path)
    monkeypatch.setattr(run, "VENV", venv)
    installs: list[str] = []
    monkeypatch.setattr(run, "_install", lambda extras, installed: installs.append(extras))
    first = os.open(tmp_path, os.O_RDONLY)
    fcntl.flock(first, fcntl.LOCK_EX)  # the first run.py, setting up
    second = threading.Thread(target=run._ensure_venv, args=("",))
    try:
        second.start()
        second.join(0.5)
        assert second.is_alive()  # waiting
        (venv / ".installed").write_text(run._stamp(""))  # what the first one leaves when done
    finally:
        os.close(first)
    second.join(10)
    assert not second.is_alive() and installs == []
    assert "waiting for another run.py" in capsys.readouterr().err
