"""Complete simulated experiments, one per instrument, in the order of the imaging chain.

``multiscope demo`` runs them all and prints one summary. Each demo module has
``run(data_dir) -> DemoResult``: it starts the simulated IOCs it needs (reusing
running ones), runs real plans through a configured session, reads the results
back from the catalog and scores them against the simulated ground truth.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DEMOS", "DemoResult", "derived_run", "run_demos"]

logger = logging.getLogger(__name__)

# Chain order: laser mill and XRM (prep), TXM tomography, XANES, FIB-SEM. Instrument issues
# insert their demos here at their place in the chain.
DEMOS: dict[str, str] = {
    "demo": "multiscope.demos.harness",
    "prep": "multiscope.demos.prep",
    "tomo": "multiscope.demos.tomo",
    "xanes": "multiscope.demos.xanes",
    "fibsem": "multiscope.demos.fibsem",
}


@dataclass
class DemoResult:
    """Outcome of one demo: what ran, the scores, and whether they pass."""

    name: str
    passed: bool
    elapsed_s: float
    scores: dict[str, str] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)


def derived_run(session, plan_name: str, uid: str):
    """The catalog's derived run ``plan_name`` made from run ``uid`` (the latest 50 runs)."""
    for summary in session.catalog.runs(limit=50):
        if summary.plan_name != plan_name:
            continue
        run = session.catalog.run(summary.uid)
        if run.metadata["start"].get("derived_from") == uid:
            return run
    raise RuntimeError(f"no {plan_name} derived run for raw run {uid}")


def run_demos(names: list[str], data_dir: Path) -> list[DemoResult]:
    """Run the named demos in chain order and print one summary table."""
    results = []
    for name in [n for n in DEMOS if n in names]:
        print(f"=== demo: {name} ===", flush=True)
        t0 = time.monotonic()
        try:
            result = importlib.import_module(DEMOS[name]).run(data_dir)
        except Exception as exc:  # one broken demo must not hide the others' results
            logger.exception("demo %s failed", name)
            result = DemoResult(name=name, passed=False, elapsed_s=0.0, details=[repr(exc)])
        result.elapsed_s = time.monotonic() - t0
        results.append(result)
    print()
    print("=" * 72)
    print(f"multiscope demo summary (data in {data_dir})")
    print("=" * 72)
    for result in results:
        verdict = "PASS" if result.passed else "FAIL"
        print(f"[{verdict}] {result.name:<10} {result.elapsed_s:7.1f} s")
        for key, value in result.scores.items():
            print(f"         {key:<36} {value}")
        for line in result.details:
            print(f"         {line}")
    return results
