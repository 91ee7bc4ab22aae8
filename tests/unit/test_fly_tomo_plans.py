"""fly_tomo_scan: validation before any message, message order, documents, restore (no IOC)."""

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import FailedStatus
from fakes import FakeCamera, FakeFlyer, FakeSample, FakeShutter
from ophyd.status import Status

from multiscope.plans.preflight import PlanArgumentError
from multiscope.plans.tomography import fly_tomo_scan


@pytest.fixture
def rig():
    camera = FakeCamera(name="camera")
    return camera, FakeSample(), FakeShutter(name="shutter", value="close"), FakeFlyer(camera)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"num_projections": 1}, "num_projections must be >= 2"),
        ({"angle_range_deg": 0}, "angle_range_deg must be > 0"),
        ({"exposure_s": 0}, "exposure_s must be > 0"),
        ({"frame_period_s": 0.01}, "frame_period_s must be >= 0.02"),
        ({"flat_policy": "every"}, "flat_policy must be one of"),
        ({"dark_policy": "sometimes"}, "dark_policy must be one of"),
        ({"num_flats": 0}, "num_flats must be >= 1"),
        ({"sample_out_offset_um": 900}, "outside its limits"),
        ({"sample_out_offset_um": 0}, "must be non-zero"),
        ({"num_projections": 20, "frame_period_s": 0.02}, "exceeds max_velocity_deg_s"),
        ({"max_velocity_deg_s": 5}, "exceeds max_velocity_deg_s"),
        ({"max_velocity_deg_s": 0}, "max_velocity_deg_s must be > 0"),
        ({"start_deg": 700}, "fly sweep"),
        # every projection angle is inside the limits, the run-up before them is not
        ({"start_deg": -719.5}, "fly sweep"),
        ({"start_deg": 540, "angle_range_deg": 179.9}, "fly sweep"),
        ({"energy_keV": -8}, "energy_keV must be > 0"),
        ({"center_guess_px": float("nan")}, "center_guess_px must be finite"),
        ({"sample_id": 3}, "sample_id must be a string"),
    ],
)
def test_bad_arguments_refused_before_any_message(rig, kwargs, fragment):
    camera, sample, shutter, flyer = rig
    args = {"num_projections": 90, "exposure_s": 0.02, "frame_period_s": 0.05, **kwargs}
    with pytest.raises(PlanArgumentError, match=fragment):
        next(iter(fly_tomo_scan(camera, sample, shutter, flyer=flyer, **args)))
    assert sample.x.position == 0 and sample.theta.position == 0
    assert sample.theta.velocity.get() == 90.0
    assert shutter.get() == "close" and flyer.calls == []


def run_plan(rig, **kwargs):
    camera, sample, shutter, flyer = rig
    RE = RunEngine({})
    documents, messages = [], []
    RE.subscribe(lambda name, doc: documents.append((name, doc)))
    RE.msg_hook = messages.append
    args = {"num_projections": 90, "exposure_s": 0.02, "frame_period_s": 0.05, "num_darks": 3,
            "num_flats": 4, "flat_policy": "both", "dark_policy": "both", "pixel_size_um": 0.26,
            "energy_keV": 8.0, "sample_id": "tab 3", **kwargs}  # fmt: skip
    RE(fly_tomo_scan(camera, sample, shutter, flyer=flyer, **args))
    return documents, messages


def test_streams_metadata_and_restored_velocity(rig):
    camera, sample, shutter, flyer = rig
    documents, messages = run_plan(rig)
    start = next(doc for name, doc in documents if name == "start")
    assert start["plan_name"] == "fly_tomo_scan" and start["num_points"] == 90
    tomo = start["tomo"]
    assert tomo["frame_period_s"] == 0.05
    assert tomo["theta_velocity_deg_s"] == pytest.approx(180 / (90 * 0.05))
    assert tomo["pixel_size_um"] == 0.26 and tomo["flat_policy"] == "both"
    assert {"num_darks", "num_flats", "dark_policy", "rotation", "center_guess_px"} <= set(tomo)
    assert start["estimated_duration_s"] > 90 * 0.05
    stop = next(doc for name, doc in documents if name == "stop")
    assert stop["exit_status"] == "success"
    assert stop["num_events"] == {"dark": 6, "flat": 8, "primary": 90}
    primary = next(d for n, d in documents if n == "descriptor" and d["name"] == "primary")
    assert set(primary["data_keys"]) == {"camera_image", "camera_theta"}
    datums = [doc for name, doc in documents if name == "stream_datum"]
    assert {d["descriptor"] for d in datums} == {primary["uid"]}
    seq = sorted((d["seq_nums"]["start"], d["seq_nums"]["stop"]) for d in datums)
    assert seq == [(1, 91), (1, 91)]  # one datum per data key
    # The flyer ran N frames at the period; speed, position and shutter are back.
    assert (flyer.num_frames, flyer.frame_period_s) == (90, 0.05)
    assert flyer.calls[:2] == ["kickoff", "complete"] and "stop" not in flyer.calls
    assert sample.theta.velocity.get() == 90.0
    assert sample.theta.position > 180  # past the end of the range (run-out)
    assert sample.x.position == 0 and shutter.get() == "close"


def test_message_order(rig):
    camera, sample, shutter, flyer = rig
    _, messages = run_plan(rig, dark_policy="start", flat_policy="end")
    theta, velocity = sample.theta, sample.theta.velocity
    steps = []
    for msg in messages:
        if msg.command == "set" and msg.obj is velocity:
            steps.append(("velocity", msg.args[0]))
        elif msg.command == "set" and msg.obj is theta:
            steps.append(("theta", round(msg.args[0], 3)))
        elif msg.command == "set" and msg.obj is sample.x:
            steps.append(("x", msg.args[0]))
        elif msg.command in ("kickoff", "complete", "declare_stream", "open_run", "close_run"):
            steps.append((msg.command,))
        elif msg.command == "trigger" and msg.obj is not camera:
            steps.append(("gate",))
        elif msg.command == "save":
            steps.append(("event",))
    # darks (3 events) before the fly; flats after it, with the sample out and back.
    velocity_deg_s = 180 / (90 * 0.05)
    runup = velocity_deg_s * (0.05 + 0.1 + 0.02 + 0.03)  # ACCL, settling, exposure, latency
    compact = [s for i, s in enumerate(steps) if s != ("event",) or steps[i - 1] != s]
    assert compact == [
        ("open_run",), ("event",), ("declare_stream",),
        # from the sweep's checkpoint (a replay repeats it): at the rotation's own speed
        # to the run-up start, then the fly speed
        ("velocity", 90.0), ("theta", round(-runup, 3)), ("velocity", velocity_deg_s),
        ("theta", round(180 + runup, 3)), ("gate",), ("kickoff",), ("complete",),
        ("velocity", 90.0),
        ("x", 300.0), ("event",), ("x", 0.0),
        ("close_run",),
    ]  # fmt: skip
    assert np.isclose(runup, 8.0)


class TriggeredFlyer(FakeFlyer):
    """A flyer started by the rotation's position trigger (records what it prepared)."""

    def __init__(self, camera):
        super().__init__(camera)
        self.start_trigger = object()
        self.prepared = []

    def prepare(self, value):
        self.prepared.append(dict(value))
        status = Status(obj=self)
        status.set_finished()
        return status


def test_position_triggered_camera_is_armed_before_the_rotation_starts(rig):
    camera, sample, shutter, _ = rig
    flyer = TriggeredFlyer(camera)
    _, messages = run_plan((camera, sample, shutter, flyer), dark_policy="none")
    theta = sample.theta
    steps = []
    for msg in messages:
        if msg.command == "set" and msg.obj is theta:
            steps.append(("theta", round(msg.args[0], 3)))
        elif msg.command in ("prepare", "kickoff", "complete"):
            steps.append((msg.command,))
        elif msg.command == "trigger" and msg.obj is not camera:
            steps.append(("gate",))  # the software gate: must not be used
    velocity_deg_s = 180 / (90 * 0.05)
    runup = velocity_deg_s * (0.05 + 0.1 + 0.02 + 0.03)
    assert steps == [
        ("theta", round(-runup, 3)), ("prepare",), ("kickoff",),
        ("theta", round(180 + runup, 3)), ("complete",),
    ]  # fmt: skip
    # The pulse fires where the first exposure starts: half an exposure before 0 deg.
    (prepared,) = flyer.prepared
    assert prepared["start_position"] == pytest.approx(-velocity_deg_s * 0.5 * 0.02)
    assert prepared["start_timeout_s"] > (180 + 2 * runup) / velocity_deg_s


def test_failed_acquisition_stops_and_restores(rig):
    camera, sample, shutter, flyer = rig
    failing = FakeFlyer(camera, fail_complete=True)
    with pytest.raises(FailedStatus) as info:
        run_plan((camera, sample, shutter, failing))
    assert "disconnected" in str(info.value.args[0].exception())
    assert "stop" in failing.calls
    assert sample.theta.velocity.get() == 90.0
