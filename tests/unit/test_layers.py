"""The package's layers import only downwards (contracts in pyproject.toml)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold():
    # lint-imports reads [tool.importlinter] from pyproject.toml; run it as a tool would.
    result = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


def test_profiles_only_call_configure_session():
    startups = sorted((ROOT / "profiles").glob("profile_*/startup/*.py"))
    assert startups, "every instrument needs a profile"
    for path in startups:
        code_lines = [
            line
            for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
        assert code_lines[0] == "from multiscope.session import configure_session", path
        assert len(code_lines) == 2 and code_lines[1].startswith("configure_session("), path
