"""dry_run(plan): duration, frames, disk, moves and checks of a plan, nothing executed."""

import math

import pytest
from test_preflight import PLANS, rig  # noqa: F401 - the fixture the plans run on

from multiscope.plans.dry_run import dry_run
from multiscope.plans.preflight import PlanArgumentError


def _state(r):
    return (r.sample.x.position, r.sample.theta.position, r.shutter.get(), r.flyer.calls)


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_every_plan_has_a_dry_run_that_executes_nothing(rig, plan):  # noqa: F811
    before = _state(rig)
    summary = dry_run(PLANS[plan](rig))
    assert _state(rig) == before  # nothing moved, opened or flown
    assert summary.plan_names and summary.messages > 0
    assert math.isfinite(summary.estimated_duration_s) and summary.estimated_duration_s > 0
    assert summary.limit_problems == []
    text = str(summary)
    for word in ("duration", "disk", "checks"):
        assert word in text


def test_tomo_scan_dry_run_counts_its_frames_moves_and_estimate(rig):  # noqa: F811
    summary = dry_run(PLANS["tomo_scan"](rig))  # 4 projections, 1 dark, 1 flat set each
    (name,) = summary.plan_names
    assert name == "tomo_scan"
    frames = summary.frames["camera"]
    assert frames >= 4 + 1 + 1
    theta = summary.moves["sample_theta"]
    assert theta.count >= 4 and theta.lowest == pytest.approx(0.0)
    # The estimate is the plan's own, from its open_run metadata.
    messages = []
    plan = PLANS["tomo_scan"](rig)
    from bluesky.simulators import RunEngineSimulator

    messages = RunEngineSimulator().simulate_plan(plan)
    (open_run,) = [m for m in messages if m.command == "open_run"]
    assert summary.estimated_duration_s == open_run.kwargs["estimated_duration_s"]


def test_frames_and_disk_follow_the_cameras_frame_size(rig):  # noqa: F811
    from test_preflight import SizedCamera

    rig.camera = SizedCamera(name="camera")
    summary = dry_run(PLANS["tomo_scan"](rig))
    assert summary.frame_bytes["camera"] == 512 * 512 * 2
    assert summary.detector_bytes == summary.frames["camera"] * 512 * 512 * 2
    # A tomography run is reconstructed: rows x columns x columns float32 voxels.
    assert summary.reconstruction_bytes == 512 * 512 * 512 * 4
    assert "reconstructions" in str(summary)


def test_a_refusal_raises_as_in_the_run_engine(rig):  # noqa: F811
    with pytest.raises(PlanArgumentError):
        dry_run(PLANS["line_scan"](rig, start=-900, stop=1))


def test_targets_outside_soft_limits_are_reported(rig):  # noqa: F811
    from bluesky import plan_stubs as bps

    def plan():
        yield from bps.open_run({"plan_name": "wander", "estimated_duration_s": 1.0})
        yield from bps.mv(rig.sample.x, 900)
        yield from bps.close_run()

    summary = dry_run(plan())
    (problem,) = summary.limit_problems
    assert "sample_x -> 900" in problem
    assert rig.sample.x.position == 0.0
    assert "OUTSIDE LIMITS" in str(summary)
