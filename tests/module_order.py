"""The order in which ``pytest -n 3 --dist loadfile`` hands test modules to its workers.

Longest first (the classic longest-processing-time rule, roughly: pytest-xdist gives a
worker its next module once it has two or fewer tests left), so that a long module does
not start last and run on alone at the end while the other workers idle.
pytest-xdist's own order (``--loadscope-reorder``, its default) is by *number of
tests*, which put the scored demos (one to three tests each, 1.5-4 min)
last; ``pyproject.toml`` turns it off (``--no-loadscope-reorder``) and
``tests/conftest.py`` sorts the collected tests with :func:`longest_modules_first`.

:data:`MODULE_SECONDS` are each module's summed test times (setup, call, teardown) from
the junit report of a full parallel run on the 2-core machine (2026-12-07). Only their
order matters; a module not listed (each took under 3 s) comes after the listed ones,
in collection order. Re-measure with ``python3 -m pytest --junitxml=report.xml`` and
``python3 tests/module_order.py report.xml`` when modules grow or are added.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent

MODULE_SECONDS = {
    "integration/test_fibsem_slice_and_view.py": 410,
    "integration/test_demo_tomo.py": 229,
    "integration/test_demo_xanes.py": 194,
    "integration/test_interrupted_exposures.py": 178,
    "integration/test_xrm.py": 165,
    "integration/test_facility_catalog.py": 154,
    "integration/test_faults.py": 112,
    "integration/test_queueserver.py": 99,
    "integration/test_demo_prep.py": 95,
    "integration/test_safe_state_ca.py": 94,
    "integration/test_txm_tomography.py": 91,
    "integration/test_xanes_3d_ca.py": 88,
    "integration/test_laser.py": 88,
    "integration/test_sample_history.py": 86,
    "unit/test_pipeline_memory.py": 83,
    "integration/test_catalog_server.py": 79,
    "unit/test_tomo_truth_scores.py": 73,
    "integration/test_cli.py": 58,
    "integration/test_focus_calibration_ca.py": 54,
    "integration/test_xanes_plans_ca.py": 48,
    "integration/test_catalog_routing.py": 48,
    "integration/test_session_demo.py": 46,
    "integration/test_stock_areadetector.py": 43,
    "unit/test_callbacks_xanes.py": 42,
    "unit/test_callbacks_slice_and_view.py": 40,
    "integration/test_fibsem_ioc.py": 39,
    "integration/test_fly_tomo.py": 38,
    "unit/test_xanes_3d.py": 33,
    "integration/test_fibsem_assembly.py": 30,
    "integration/test_txm_devices_ca.py": 29,
    "integration/test_crash_recovery.py": 28,
    "integration/test_txm_xanes_ioc.py": 26,
    "integration/test_txm_ioc.py": 26,
    "integration/test_catalog.py": 25,
    "integration/test_motor_record.py": 20,
    "integration/test_catalog_moved.py": 20,
    "unit/test_xrm_scene.py": 19,
    "integration/test_devices_ca.py": 19,
    "unit/test_tomo_volume.py": 16,
    "unit/test_txm_xanes_scene.py": 13,
    "unit/test_find_center_truncated.py": 13,
    "unit/test_xanes_plans.py": 11,
    "unit/test_serial_tab.py": 11,
    "integration/test_interrupts.py": 11,
    "unit/test_analysis_stripe.py": 10,
    "unit/test_analysis_correlative.py": 10,
    "integration/test_catalog_secrets.py": 9,
    "unit/test_analysis_xanes.py": 8,
    "unit/test_callbacks_tomo.py": 7,
    "unit/test_physics_projector.py": 6,
    "unit/test_fibsem_scene.py": 6,
    "unit/test_export.py": 5,
    "unit/test_xanes_truth.py": 4,
    "unit/test_run_watchdog.py": 4,
    "unit/test_pixel_classifier.py": 4,
    "unit/test_dry_run.py": 4,
    "unit/test_callbacks_mosaic.py": 4,
    "unit/test_analysis_tomo.py": 4,
    "unit/test_analysis_stitch.py": 4,
    "unit/test_analysis_stack.py": 4,
}


def module_key(path: Path) -> str:
    """``integration/test_x.py``: a test module's path under ``tests/`` (else its full path)."""
    path = Path(path).resolve()
    return path.relative_to(TESTS).as_posix() if path.is_relative_to(TESTS) else path.as_posix()


def longest_modules_first(items: list) -> None:
    """Sort collected test items (in place) by their module's :data:`MODULE_SECONDS`, longest first.

    The sort is stable: a module's tests keep their order, and unlisted modules keep
    their collection order after the listed ones.
    """
    seconds = {}
    for item in items:
        if item.path not in seconds:
            seconds[item.path] = MODULE_SECONDS.get(module_key(item.path), 0)
    items.sort(key=lambda item: -seconds[item.path])


def _measure(report: str) -> dict[str, int]:
    """Summed test seconds per module (>= 3 s) from a junit XML report, longest first."""
    import xml.etree.ElementTree as ET

    totals: Counter = Counter()
    for case in ET.parse(report).iter("testcase"):
        module = case.get("classname").removeprefix("tests.").replace(".", "/") + ".py"
        totals[module] += float(case.get("time"))
    return {module: round(s) for module, s in totals.most_common() if s >= 3}


if __name__ == "__main__":
    for module, s in _measure(sys.argv[1]).items():
        print(f'    "{module}": {s},')
