"""``multiscope demo fibsem`` end to end: slice and view over Channel Access on both
phantoms, the acquiring client killed inside a cut and the series resumed, the live
assembly and the kintsugi segmentation scored against the simulator's ground truth
(~2 min on 2 cores).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from multiscope import simctl
from multiscope.demos import DEMOS
from multiscope.demos.fibsem import FibsemDemoConfig, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_fibsem_demo_ends_the_chain():
    assert list(DEMOS)[-1] == "fibsem"


@pytest.mark.timeout(600)
def test_fibsem_demo_scores_pass(tmp_path):
    config = FibsemDemoConfig()
    result = run(tmp_path, config=config)
    summary = "\n".join(f"{k}: {v}" for k, v in result.scores.items())
    assert result.passed, summary + "\n" + "\n".join(result.details)
    scores = result.scores
    # Killed inside a cut and resumed: every slice milled once, by the instrument's count.
    assert scores["slices milled"].startswith(f"{config.n_slices} / {config.n_slices}")
    assert "none twice" in scores["cuts recorded"]
    assert f"faces imaged {config.n_slices} / {config.n_slices}" in scores["cuts recorded"]
    # Located and assembled: the issue's bounds, and the labels at the faces' depths.
    drift = float(re.search(r"max error ([\d.]+) px", scores["drift"]).group(1))
    registration = float(re.search(r"max error ([\d.]+)", scores["EDS-SIMS registration"]).group(1))
    assert drift < 0.5 and registration < 0.5
    labels = re.search(
        r"R\^2 ([\d.]+) at .*, ([\d.]+) [\d.]+ um deeper", scores["volume vs labels"]
    )
    right, deeper = float(labels.group(1)), float(labels.group(2))
    assert right >= 0.85 and right > deeper
    # Kintsugi: every class at Dice >= 0.9 with it, measurably worse without.
    with_pt = [float(v) for v in re.findall(r"[\d.]+", scores["Dice with kintsugi"])]
    assert len(with_pt) == 3 and min(with_pt) >= 0.9
    gain = float(re.search(r"\+([\d.]+)", scores["kintsugi gain"]).group(1))
    assert gain >= 0.02
    # The figures a person looks at, and no IOC left behind.
    figures = [d for d in result.details if d.startswith("figure:")]
    assert any("covariance_li_zr.png" in f for f in figures), result.details
    assert list(Path(tmp_path, "derived").rglob("covariance_li_zr.png"))
    assert "fibsem" not in simctl.status(tmp_path)
