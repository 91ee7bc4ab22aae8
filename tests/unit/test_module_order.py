"""The order modules go to the pytest-xdist workers: longest first (tests/module_order.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from module_order import MODULE_SECONDS, TESTS, longest_modules_first


@dataclass
class _Item:
    path: Path
    name: str


def test_every_timed_module_exists():
    # A renamed or removed module would silently lose its place at the front.
    missing = [module for module in MODULE_SECONDS if not (TESTS / module).is_file()]
    assert not missing, f"tests/module_order.py lists modules that are gone: {missing}"


def test_longest_modules_go_first_and_each_keeps_its_tests_in_order():
    short, longest = TESTS / "unit/test_never_timed.py", TESTS / "integration/test_demo_tomo.py"
    middle = TESTS / "integration/test_faults.py"
    items = [_Item(short, "a"), _Item(middle, "b"), _Item(longest, "c"), _Item(middle, "d"),
             _Item(short, "e"), _Item(longest, "f")]  # fmt: skip
    longest_modules_first(items)
    assert [item.name for item in items] == ["c", "f", "b", "d", "a", "e"]


def test_the_workers_take_modules_in_this_order():
    # pytest-xdist would otherwise reorder modules by their number of tests.
    import tomllib

    options = tomllib.loads((TESTS.parent / "pyproject.toml").read_text())
    addopts = options["tool"]["pytest"]["ini_options"]["addopts"].split()
    assert "--no-loadscope-reorder" in addopts and "loadfile" in addopts
