"""Modules stay enterable: none over 900 lines, no callback function over 120 lines.

Fused modules are split along their seams (decision 0012); this keeps them split.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 900
MAX_CALLBACK_FUNCTION_LINES = 120


def _modules():
    for top in ("src", "sim_devices", "bench"):
        yield from sorted((ROOT / top).rglob("*.py"))


def test_no_module_over_900_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}  # fmt: skip
    assert not long, long


def test_no_function_over_120_lines_in_callbacks():
    long = {}
    for path in sorted((ROOT / "src" / "multiscope" / "callbacks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_CALLBACK_FUNCTION_LINES:
                    long[f"{path.name}:{node.lineno} {node.name}"] = length
    assert not long, long
