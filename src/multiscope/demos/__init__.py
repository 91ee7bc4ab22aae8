"""Complete simulated experiments, one per instrument, in the order of the imaging chain.

``multiscope demo`` runs them all and prints one summary. The chain follows one
sample, :data:`CHAIN_SAMPLE_ID`: the tab the laser mill cuts (``prep``) is the one the
TXM images (``tomo``, ``xanes``) and the PFIB-SEM sections (``fibsem``); after two or
more of them, its history is read back from the catalog and checked (``chain``). Each
demo module has
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

__all__ = ["CHAIN_INSTRUMENTS", "CHAIN_SAMPLE_ID", "DEMOS", "DemoResult", "derived_run",
           "run_demos"]  # fmt: skip

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


#: The sample the chain follows: cut by the laser mill, imaged by the TXM, sectioned.
CHAIN_SAMPLE_ID = "tab-1"
#: The instrument each demo handles the chain's sample on.
CHAIN_INSTRUMENTS = {"prep": "laser", "tomo": "txm", "xanes": "txm", "fibsem": "fibsem"}


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
    chain = _chain_history(names, data_dir)
    if chain is not None:
        results.append(chain)
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


def _chain_history(names: list[str], data_dir: Path) -> DemoResult | None:
    """Read the chain sample's history back; pass if its instruments came in chain order."""
    expected = list(dict.fromkeys(CHAIN_INSTRUMENTS[n] for n in DEMOS
                                  if n in names and n in CHAIN_INSTRUMENTS))  # fmt: skip
    if len(expected) < 2:
        return None
    from ..catalog import Catalog

    t0 = time.monotonic()
    print(f"=== the chain's sample {CHAIN_SAMPLE_ID!r}, read back from the catalog ===")
    try:
        with Catalog.embedded(data_dir, bluesky_clients=False) as catalog:
            history = catalog.sample_history(CHAIN_SAMPLE_ID)
    except Exception as exc:  # the demos' own results stand; this one fails
        logger.exception("reading the chain's history failed")
        return DemoResult(name="chain", passed=False, elapsed_s=0.0, details=[repr(exc)])
    print(history, flush=True)
    seen = [instrument for instrument in history.instruments if instrument in expected]
    registered = history.record is not None or "prep" not in names
    failed = [s.uid[:8] for s in history if s.exit_status != "success"]
    passed = seen == expected and registered and not failed
    scores = {
        "instruments, in order": f"{' -> '.join(seen) or '-'} (expected {' -> '.join(expected)})",
        "runs on the sample": f"{len(history)} ({len(failed)} not successful)",
        "registered by": history.record.registered_by[:8] if history.record else "nobody",
    }
    return DemoResult(name="chain", passed=passed, elapsed_s=time.monotonic() - t0, scores=scores)
