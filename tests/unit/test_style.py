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


def _redefinitions(tree) -> list[str]:
    """Names a module or class body defines twice with ``def``/``class`` (the first is dead)."""
    import ast

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef):
            seen = set()
            for child in node.body:
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    # a property's setter reuses its getter's name on purpose
                    decorators = {ast.unparse(d) for d in child.decorator_list}
                    if child.name in seen and not any(".setter" in d for d in decorators):
                        found.append(f"{child.name} (line {child.lineno})")
                    seen.add(child.name)
    return found


def test_no_function_or_method_is_defined_twice():
    # ruff's F811 does not report a method redefined in a class body
    # (callbacks/xanes_base.py had two identical `_transmission`).
    import ast

    offenders = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        found = _redefinitions(ast.parse(path.read_text(), str(path)))
        offenders += [f"{path.relative_to(ROOT)}: {name}" for name in found]
    assert not offenders, offenders
