"""A launcher's socket names what its children would import (decision 0037)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from multiscope import launcher

PRELOAD = ("json",)


@pytest.fixture
def tmp_path():
    """A short temporary directory: a socket's path holds at most 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="msk-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_socket_changes_with_the_source_and_the_import_environment(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.delenv(launcher.DIR_ENV, raising=False)  # the tests' own
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    package = tmp_path / "package"
    package.mkdir()
    (package / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(launcher, "_package_dir", lambda: package)
    first = launcher.socket_path(PRELOAD)
    assert first.parent == run / f"multiscope-{os.getuid()}"
    assert launcher.socket_path(PRELOAD) == first  # stable
    monkeypatch.setenv("MULTISCOPE_SOMETHING", "read at run time only")
    assert launcher.socket_path(PRELOAD) == first
    assert launcher.socket_path(("json", "csv")) != first
    # Read while numpy imports; a value the test process does not have already.
    threads_now = os.environ.get("OMP_NUM_THREADS", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "3" if threads_now != "3" else "5")
    threads = launcher.socket_path(PRELOAD)
    assert threads != first
    (package / "a.py").write_text("x = 22\n")  # an edit: the old launcher's code is stale
    assert launcher.socket_path(PRELOAD) != threads


def test_no_socket_in_a_directory_others_can_enter(tmp_path, monkeypatch):
    monkeypatch.delenv(launcher.DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    shared = tmp_path / f"multiscope-{os.getuid()}"
    shared.mkdir()
    os.chmod(shared, 0o777)
    assert launcher.socket_path(PRELOAD) is None
    os.chmod(shared, 0o700)
    assert launcher.socket_path(PRELOAD).parent == shared


def test_a_socket_directory_of_its_own_and_too_long_a_path(tmp_path, monkeypatch):
    chosen = tmp_path / "launchers"
    monkeypatch.setenv(launcher.DIR_ENV, str(chosen))
    assert launcher.socket_path(PRELOAD).parent == chosen  # made, owner-only
    assert chosen.stat().st_mode & 0o777 == 0o700
    deep = tmp_path / ("d" * 90)
    monkeypatch.setenv(launcher.DIR_ENV, str(deep))
    assert launcher.socket_path(PRELOAD) is None  # over a socket's 107 bytes: none
