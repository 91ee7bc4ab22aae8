"""``multiscope demo prep`` end to end: a tab cut by the laser mill for the TXM's energy and
a shorted coin cell scouted and zoomed by the lab XRM, over Channel Access, read back from
the catalog and scored against the simulators' truth (~1-2 min on 2 cores)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from multiscope import simctl
from multiscope.demos import DEMOS
from multiscope.demos.prep import CHAIN_SAMPLE_ID, run
from multiscope.demos.prep_scores import TOLERANCES

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_prep_comes_before_tomography_in_the_chain():
    names = list(DEMOS)
    assert names.index("prep") == names.index("demo") + 1 == names.index("tomo") - 1


@pytest.mark.timeout(600)
def test_prep_demo_scores_pass(tmp_path, capsys):
    result = run(tmp_path)
    printed = capsys.readouterr().out
    summary = "\n".join(f"{k}: {v}" for k, v in result.scores.items())
    assert result.passed, summary + "\n" + "\n".join(result.details)
    assert len(result.scores) == 10 and all(v.endswith("PASS") for v in result.scores.values())
    width, target = (
        float(v) for v in re.findall(r"([\d.]+) um", result.scores["tab width vs thickness rule"])
    )
    assert abs(width - target) <= TOLERANCES["tab_width_um"]
    assert 90.0 < target < 100.0  # two attenuation lengths of porous NMC811 at 8 keV
    voi_error = float(re.search(r": ([\d.]+) mm", result.scores["VOI vs true defect (mm)"])[1])
    assert voi_error < TOLERANCES["voi_mm"]
    assert result.scores["cuts made"].startswith("1 (instrument count)")
    # Both histories were printed from the catalog; the figure exists; the IOCs are gone.
    assert f"sample '{CHAIN_SAMPLE_ID}' (NMC811, from sheet-1)" in printed
    assert "sample 'coin-2' (Na-ion coin cell)" in printed
    (figure,) = Path(tmp_path, "derived", "prep").glob("prep-*.png")
    assert f"figure: {figure}" in result.details
    stopped = [re.search(r"pid (\d+), port (\d+)", d) for d in result.details if "IOC" in d]
    assert len(stopped) == 2
    for match in stopped:
        assert not simctl.pid_exists(int(match[1])) and simctl.port_is_free(int(match[2]))
