"""ruff is the project's linter and formatter; the suite fails on a violation."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _ruff(*args):
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_ruff_check_passes():
    result = _ruff("check", "src", "sim_devices", "tests", "bench", "profiles")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean():
    result = _ruff("format", "--check", "src", "sim_devices", "tests", "bench", "profiles")
    assert result.returncode == 0, result.stdout + result.stderr
