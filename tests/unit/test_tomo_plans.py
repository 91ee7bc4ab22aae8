"""tomo_scan: schedule, validation before any message, streams and metadata (no IOC)."""

import numpy as np
import pytest
from bluesky import RunEngine
from fakes import FakeCamera, FakeShutter, FakeStage

from multiscope.plans.preflight import PlanArgumentError
from multiscope.plans.tomography import tomo_scan, tomo_schedule


@pytest.fixture
def rig():
    return (
        FakeCamera(name="camera"),
        FakeStage(name="sample"),
        FakeShutter(name="shutter", value="close"),
    )


def test_schedule_policies():
    s = tomo_schedule(8, 180, flat_policy="both", dark_policy="start")
    np.testing.assert_allclose(s.angles_deg, np.arange(8) * 22.5)
    assert s.flats_before == (0, 8) and s.darks_before == (0,)
    assert tomo_schedule(10, flat_policy="every", flat_every=4).flats_before == (0, 4, 8, 10)
    assert tomo_schedule(10, flat_policy="none", dark_policy="none").flats_before == ()
    assert tomo_schedule(10, flat_policy="end").flats_before == (10,)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"num_projections": 1}, "num_projections must be >= 2"),
        ({"angle_range_deg": 0}, "angle_range_deg must be > 0"),
        ({"angle_range_deg": 400}, "angle_range_deg must be <= 360"),
        ({"exposure_s": 0}, "exposure_s must be > 0"),
        ({"flat_policy": "sometimes"}, "flat_policy must be one of"),
        ({"flat_policy": "every"}, "flat_every is required"),
        ({"flat_every": 3}, "flat_every is only used"),
        ({"num_flats": 0}, "num_flats must be >= 1"),
        ({"sample_out_offset_um": 900}, "outside its limits"),
        ({"sample_out_offset_um": 0}, "must be non-zero"),
        ({"start_deg": 700}, "outside its limits"),
        ({"energy_keV": -8}, "energy_keV must be > 0"),
        ({"sample_id": 3}, "sample_id must be a string"),
    ],
)
def test_bad_arguments_refused_before_any_message(rig, kwargs, fragment):
    camera, sample, shutter = rig
    with pytest.raises(PlanArgumentError, match=fragment):
        next(iter(tomo_scan(camera, sample, shutter, **kwargs)))
    assert sample.x.position == 0 and sample.theta.position == 0
    assert shutter.get() == "close"


def test_streams_metadata_and_final_state(rig):
    camera, sample, shutter = rig
    RE = RunEngine({})
    documents = []
    RE.subscribe(lambda name, doc: documents.append((name, doc)))
    RE(
        tomo_scan(
            camera, sample, shutter, num_projections=12, exposure_s=0.02, num_darks=3,
            num_flats=4, flat_policy="every", flat_every=5, dark_policy="both",
            pixel_size_um=0.13, energy_keV=8.0, sample_id="tab 3",
        )
    )  # fmt: skip
    start = next(doc for name, doc in documents if name == "start")
    assert start["plan_name"] == "tomo_scan" and start["num_points"] == 12
    assert start["tomo"]["pixel_size_um"] == 0.13 and start["tomo"]["sample_id"] == "tab 3"
    assert start["estimated_duration_s"] > 0
    streams = {doc["uid"]: doc["name"] for name, doc in documents if name == "descriptor"}
    counts = {}
    for name, doc in documents:
        if name == "event":
            counts[streams[doc["descriptor"]]] = counts.get(streams[doc["descriptor"]], 0) + 1
    # flats at 0, 5, 10 and the end: 4 sets of 4; darks at start and end: 2 sets of 3.
    assert counts == {"primary": 12, "flat": 16, "dark": 6}
    thetas = [doc["data"]["sample_theta"] for name, doc in documents
              if name == "event" and streams[doc["descriptor"]] == "primary"]  # fmt: skip
    np.testing.assert_allclose(thetas, np.arange(12) * 15.0)
    # Frames at the plan's exposure; the camera's own exposure back afterwards (safe state).
    primary = next(d for n, d in documents if n == "descriptor" and d["name"] == "primary")
    assert primary["configuration"]["camera"]["data"]["camera_cam_acquire_time"] == 0.02
    assert camera.cam.acquire_time.get() == 0.1
    assert sample.x.position == 0  # back in the beam
    assert shutter.get() == "close"
    stop = next(doc for name, doc in documents if name == "stop")
    assert stop["exit_status"] == "success"
