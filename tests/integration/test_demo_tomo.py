"""``multiscope demo tomo`` end to end: a TXM vertical mosaic over Channel Access, analysed
live, read back from the catalog and scored against the simulator's ground truth.

The demo runs with its default configuration (the one ``multiscope demo`` runs: three
tiles of 181 projections of 256 x 256 px at 0.26 um) on a dedicated IOC on one of the
session's reserved CA ports; ~2.5 min on 2 cores.
"""

from __future__ import annotations

import re

import pytest

from multiscope import simctl
from multiscope.demos import DEMOS
from multiscope.demos.tomo import TOLERANCES, TomoDemoConfig, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_is_in_the_chain():
    names = list(DEMOS)
    assert names[0] == "demo"  # the harness first, then the imaging chain
    assert DEMOS["tomo"] == "multiscope.demos.tomo"
    # Chain order: laser mill and XRM (prep), TXM tomography, XANES, FIB-SEM.
    chain = [n for n in ("prep", "tomo", "xanes", "fibsem") if n in names]
    assert [n for n in names if n in chain] == chain


@pytest.mark.timeout(900)
def test_tomo_demo_scores_pass(ca_port_pool, tmp_path, capsys):
    port = next(ca_port_pool)
    config = TomoDemoConfig()
    result = run(tmp_path, config=config, port=port)
    printed = capsys.readouterr().out
    summary = "\n".join(f"{k}: {v}" for k, v in result.scores.items())
    assert result.passed, summary + "\n" + "\n".join(result.details)
    # Every score is there and passes against its stated tolerance.
    for key in (
        "centre error per tile (px)",
        "reconstruction RMSE vs phantom",
        "stitch offset errors (voxels)",
        "particle count vs truth",
        "mean diameter vs truth",
    ):
        assert result.scores[key].endswith("PASS"), (key, result.scores[key])
    centre = result.scores["centre error per tile (px)"]
    errors = [float(v) for v in re.findall(r"[-+]\d+\.\d+", centre.split("(")[0])]
    assert len(errors) == config.num_tiles
    assert all(abs(e) < TOLERANCES["center_px"] for e in errors)
    assert "acquired in" in printed
    # Wall time (the issue asks < 5 min) is measured and printed, not asserted: it
    # depends on the machine's load; docs/benchmarks.md records it.
    # The dedicated IOC is stopped and was never recorded in the data directory's state.
    assert "txm" not in simctl.status(tmp_path)
    assert simctl.port_is_free(port)
