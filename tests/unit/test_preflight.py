"""Plans refuse bad arguments before emitting any message (docs/stack-facts.md, fault row 10)."""

import math
import time
from types import SimpleNamespace

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import Msg
from fakes import (
    CamSettings,
    FakeCamera,
    FakeFlyer,
    FakeRotation,
    FakeShutter,
    fake_txm_energy,
    thin_lens,
)
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.sim import SoftPositioner, SPseudo3x3, det, make_fake_device

from multiscope.devices.beam import BeamCurrent
from multiscope.plans.calibration import focus_calibration
from multiscope.plans.mosaic import mosaic_radiograph, vertical_mosaic_tomo
from multiscope.plans.preflight import (
    MAX_RUN_DURATION_S,
    PlanArgumentError,
    field_of_view_um,
    format_duration,
    require_duration_within,
    require_int,
    require_number,
    require_positions_within_limits,
)
from multiscope.plans.scans import count_frames, line_scan
from multiscope.plans.tomography import fly_tomo_scan, tomo_scan
from multiscope.plans.xanes import energy_grid, xanes_2d, xanes_3d


@pytest.fixture
def axis():
    motor = SoftPositioner(name="axis", limits=(-5, 5), init_pos=0)
    return motor


def first_message(plan):
    return next(iter(plan))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"start": -6, "stop": 1, "num": 3}, "outside its limits"),
        ({"start": 0, "stop": 5.5, "num": 3}, "outside its limits"),
        ({"start": 0, "stop": 1, "num": 0}, "num must be >= 1"),
        ({"start": 0, "stop": 1, "num": 2.5}, "num must be an integer"),
        ({"start": "a", "stop": 1, "num": 2}, "start must be a number"),
        ({"start": math.nan, "stop": 1, "num": 2}, "start must be finite"),
    ],
)
def test_line_scan_refuses_before_any_message(axis, kwargs, fragment):
    with pytest.raises(PlanArgumentError, match=fragment):
        first_message(line_scan([det], axis, **kwargs))
    assert axis.position == 0


def test_line_scan_refusal_through_run_engine_moves_nothing(axis):
    RE = RunEngine({})
    documents = []
    RE.subscribe(lambda name, doc: documents.append(name))
    with pytest.raises(PlanArgumentError):
        RE(line_scan([det], axis, 0, 9, 5))
    assert documents == []  # no run was opened
    assert axis.position == 0


def test_line_scan_runs_and_records_estimate(axis):
    RE = RunEngine({})
    starts = []
    RE.subscribe(lambda name, doc: starts.append(doc) if name == "start" else None)
    (uid,) = RE(line_scan([det], axis, -1, 1, 5))
    assert starts[0]["plan_name"] == "line_scan"
    assert starts[0]["num_points"] == 5
    assert starts[0]["estimated_duration_s"] >= 0
    assert axis.position == pytest.approx(1)


def test_detectors_must_be_a_list_of_readables(axis):
    with pytest.raises(PlanArgumentError, match="list of readable"):
        first_message(line_scan(det, axis, 0, 1, 2))
    with pytest.raises(PlanArgumentError, match="not readable"):
        first_message(count_frames([object()], 1))


def test_limits_zero_zero_mean_none():
    free = SoftPositioner(name="free", limits=(0, 0), init_pos=0)
    require_positions_within_limits("positions", free, [-1e6, 1e6])


def test_scalar_checks():
    assert require_int("n", 3, minimum=1) == 3
    with pytest.raises(PlanArgumentError, match="n must be an integer"):
        require_int("n", True)
    with pytest.raises(PlanArgumentError, match="overlap must be > 0"):
        require_number("overlap", 0, minimum=0, exclusive_minimum=True)
    with pytest.raises(PlanArgumentError, match="overlap must be <= 0.5"):
        require_number("overlap", 0.7, maximum=0.5)


def test_format_duration():
    assert format_duration(12) == "12.0 s"
    assert format_duration(185) == "3 min 05 s"
    assert format_duration(3720) == "1 h 02 min"


# -- every plan: bad input never starts a run (issue 8, part 4) -------------------------

ENERGIES = [8.28, 8.30, 8.32, 8.333, 8.35, 8.37, 8.40, 8.43]


class ArraySize(Device):
    array_size_x = Cpt(Signal, value=512)
    array_size_y = Cpt(Signal, value=512)


class SizedCamSettings(CamSettings):
    array_size = Cpt(ArraySize)


class SizedCamera(FakeCamera):
    """A fake camera that knows its width: 512 columns (the simulated TXM at binning 2)."""

    cam = Cpt(SizedCamSettings)


class Stage:
    """Sample stage with every axis a plan uses: x, z (um) and a fly-capable theta (deg)."""

    def __init__(self):
        self.x = SoftPositioner(name="sample_x", limits=(-500, 500), init_pos=0.0)
        self.z = SoftPositioner(name="sample_z", limits=(-500, 500), init_pos=0.0)
        self.theta = FakeRotation(name="sample_theta")


class XOnlyStage:
    def __init__(self):
        self.x = SoftPositioner(name="sample_x", limits=(-500, 500), init_pos=0.0)


@pytest.fixture
def rig():
    camera = FakeCamera(name="camera")
    return SimpleNamespace(
        camera=camera,
        sample=Stage(),
        shutter=FakeShutter(name="shutter", value="close"),
        energy=fake_txm_energy(),
        flyer=FakeFlyer(camera),
        beam_current=make_fake_device(BeamCurrent)("TXM:ring:", name="beam_current"),
        grid=energy_grid("Ni", energies_keV=ENERGIES, whiteline_eV=(-5, 40)),
    )


def _tomo(r, **kw):
    args = {"camera": r.camera, "sample": r.sample, "shutter": r.shutter, "num_projections": 4,
            "exposure_s": 0.01, "num_darks": 1, "num_flats": 1, **kw}  # fmt: skip
    return tomo_scan(args.pop("camera"), args.pop("sample"), args.pop("shutter"), **args)


def _fly(r, **kw):
    args = {"camera": r.camera, "sample": r.sample, "shutter": r.shutter, "flyer": r.flyer,
            "num_projections": 90, "exposure_s": 0.02, "frame_period_s": 0.05, **kw}  # fmt: skip
    return fly_tomo_scan(args.pop("camera"), args.pop("sample"), args.pop("shutter"), **args)


def _xanes(plan, r, **kw):
    args = {"camera": r.camera, "energy": r.energy, "sample": r.sample, "shutter": r.shutter,
            "grid": r.grid, **kw}  # fmt: skip
    if plan is xanes_3d:
        args.setdefault("num_projections", 4)
    devices = [args.pop(k) for k in ("camera", "energy", "sample", "shutter", "grid")]
    return plan(*devices, **args)


def _radiograph(r, **kw):
    args = {"camera": r.camera, "sample": r.sample, "shutter": r.shutter, "rows": 2,
            "columns": 2, "tile_width_um": 50, "tile_height_um": 50, **kw}  # fmt: skip
    return mosaic_radiograph(args.pop("camera"), args.pop("sample"), args.pop("shutter"), **args)


def _mosaic_tomo(r, **kw):
    args = {"camera": r.camera, "sample": r.sample, "shutter": r.shutter, "num_tiles": 2,
            "tile_height_um": 50, "num_projections": 4, "num_darks": 1, "num_flats": 1,
            **kw}  # fmt: skip
    return vertical_mosaic_tomo(args.pop("camera"), args.pop("sample"), args.pop("shutter"),
                                **args)  # fmt: skip


def _focus(r, **kw):
    args = {"camera": r.camera, "energy": r.energy, "shutter": r.shutter, **kw}
    devices = [args.pop(k) for k in ("camera", "energy", "shutter")]
    return focus_calibration(*devices, [8.25, 8.35, 8.45], **args)


def _line(r, **kw):
    args = {"detectors": [det], "motor": r.sample.x, "start": -1, "stop": 1, "num": 3, **kw}
    return line_scan(**args)


def _count(r, **kw):
    return count_frames(**{"detectors": [det], "num": 3, **kw})


PLANS = {
    "tomo_scan": _tomo,
    "fly_tomo_scan": _fly,
    "xanes_2d": lambda r, **kw: _xanes(xanes_2d, r, **kw),
    "xanes_3d": lambda r, **kw: _xanes(xanes_3d, r, **kw),
    "mosaic_radiograph": _radiograph,
    "vertical_mosaic_tomo": _mosaic_tomo,
    "focus_calibration": _focus,
    "line_scan": _line,
    "count_frames": _count,
}

BEYOND = r"is estimated at .* beyond max_duration_s = 24 h 00 min"
NOT_A_CAMERA = r"camera must be a camera .*, got FakeBeamCurrent .*no cam.acquire_time"
IN_FIELD = "sample_out_offset_um = .* leaves the sample in the field of view"

# (plan, keyword arguments: "beam_current", None, ... stand for those devices, fragment)
REFUSED = [
    # -- a device that is not what the plan needs: never an AttributeError --------------
    *[(plan, {"camera": "beam_current"}, NOT_A_CAMERA)
      for plan in ("tomo_scan", "fly_tomo_scan", "xanes_2d", "xanes_3d", "mosaic_radiograph",
                   "vertical_mosaic_tomo", "focus_calibration")],
    *[(plan, {"camera": None}, r"camera must be a camera .*, got None")
      for plan in ("tomo_scan", "fly_tomo_scan", "xanes_2d", "xanes_3d", "mosaic_radiograph",
                   "vertical_mosaic_tomo", "focus_calibration")],
    *[(plan, {"shutter": None}, r"shutter must be a shutter .*, got None")
      for plan in ("tomo_scan", "fly_tomo_scan", "xanes_2d", "xanes_3d", "mosaic_radiograph",
                   "vertical_mosaic_tomo", "focus_calibration")],
    ("tomo_scan", {"shutter": "beam_current"}, "shutter must be a shutter.* no set"),
    ("tomo_scan", {"shutter": "read_only"}, "shutter must be a shutter, got read-only"),
    *[(plan, {"sample": None}, "sample must be a sample stage")
      for plan in ("tomo_scan", "fly_tomo_scan", "xanes_2d", "xanes_3d", "mosaic_radiograph",
                   "vertical_mosaic_tomo")],
    ("tomo_scan", {"sample": "x_only"}, "sample must be a sample stage.* no theta"),
    ("xanes_3d", {"sample": "x_only"}, "sample must be a sample stage.* no theta"),
    ("mosaic_radiograph", {"sample": "x_only"}, "sample must be a sample stage.* no z"),
    ("tomo_scan", {"sample": "beam_current"}, "sample must be a sample stage"),
    ("fly_tomo_scan", {"flyer": object()}, "flyer must be a flyer"),
    ("xanes_3d", {"scan_mode": "fly", "flyer": object()}, "flyer must be a flyer"),
    *[(plan, {"energy": None}, "energy must be the energy pseudo axis")
      for plan in ("xanes_2d", "xanes_3d", "focus_calibration")],
    ("xanes_2d", {"energy": "sample_x"}, "energy must be the energy .* no focus_calibration"),
    ("focus_calibration", {"energy": "sample_x"}, "energy must be the energy pseudo axis"),
    ("line_scan", {"motor": None}, "motor must be movable"),
    ("line_scan", {"detectors": [None]}, "detectors: None is not readable"),
    ("count_frames", {"detectors": None}, "detectors must be a list"),
    # -- runs of days, refused at once, before any point list ---------------------------
    ("tomo_scan", {"num_projections": 10**7}, "tomo_scan " + BEYOND),
    ("tomo_scan", {"exposure_s": 1e6}, "tomo_scan " + BEYOND),
    ("tomo_scan", {"num_projections": 10**7, "flat_policy": "every", "flat_every": 1},
     "tomo_scan " + BEYOND),
    ("fly_tomo_scan", {"num_projections": 10**7}, "fly_tomo_scan " + BEYOND),
    ("fly_tomo_scan", {"exposure_s": 1e6, "frame_period_s": None}, "fly_tomo_scan " + BEYOND),
    ("mosaic_radiograph", {"rows": 1000, "columns": 1000}, "mosaic_radiograph " + BEYOND),
    ("mosaic_radiograph", {"exposure_s": 1e6}, "mosaic_radiograph " + BEYOND),
    ("xanes_2d", {"num_frames": 10**6}, "xanes_2d " + BEYOND),  # 8 x 10**6 frames
    ("xanes_2d", {"exposure_s": 1e6}, "xanes_2d " + BEYOND),
    ("xanes_3d", {"num_projections": 10**6}, "xanes_3d " + BEYOND),
    ("xanes_3d", {"num_projections": 10**6, "scan_mode": "fly"}, "xanes_3d " + BEYOND),
    ("vertical_mosaic_tomo", {"exposure_s": 1e6}, "tomo_scan " + BEYOND),  # each tile a run
    ("focus_calibration", {"zp_z_step_mm": 1e-9}, "focus_calibration " + BEYOND),  # 8e8 points
    ("focus_calibration", {"exposure_s": 1e6}, "focus_calibration " + BEYOND),
    ("line_scan", {"num": 10**7}, "line_scan " + BEYOND),
    ("count_frames", {"num": 10**8}, "count_frames " + BEYOND),
    # -- the limit is the caller's, but must be a limit ---------------------------------
    ("tomo_scan", {"max_duration_s": 1}, r"tomo_scan is .* beyond max_duration_s = 1.0 s"),
    ("line_scan", {"max_duration_s": 0}, r"max_duration_s must be > 0"),
    ("xanes_2d", {"max_duration_s": -1}, r"max_duration_s must be > 0"),
    ("mosaic_radiograph", {"max_duration_s": "a day"}, "max_duration_s must be a number"),
    ("count_frames", {"max_duration_s": math.nan}, r"max_duration_s must be > 0"),
    # -- flats with the sample still in the field of view ----------------------------
    ("tomo_scan", {"sample_out_offset_um": 5}, IN_FIELD),
    ("tomo_scan", {"sample_out_offset_um": -5}, IN_FIELD),
    ("tomo_scan", {"sample_out_offset_um": 0}, "sample_out_offset_um must be non-zero"),
    ("fly_tomo_scan", {"sample_out_offset_um": 5}, IN_FIELD),
    ("xanes_2d", {"sample_out_offset_um": 5}, IN_FIELD),
    ("xanes_3d", {"sample_out_offset_um": 5}, IN_FIELD),
    ("mosaic_radiograph", {"sample_out_offset_um": 5}, IN_FIELD),
    ("mosaic_radiograph", {"sample_out_offset_um": 0}, IN_FIELD),
    ("vertical_mosaic_tomo", {"sample_out_offset_um": 5}, IN_FIELD),
    # 512 columns of 0.26 um: a 133 um field, wider than the TXM's widest default
    ("tomo_scan", {"camera": "sized", "pixel_size_um": 0.26, "sample_out_offset_um": 100},
     r"field of view \(133.1 um wide\)"),
    ("xanes_2d", {"camera": "sized", "sample_out_offset_um": 100},
     r"field of view \(133.1 um wide\)"),  # the pixel from energy.pixel_size (260 nm)
    # -- a pseudo positioner with more than one axis cannot be stepped as one ----------
    ("line_scan", {"motor": "pseudo3"}, "start/stop: p3 has 3 axes"),
    ("line_scan", {"motor": "energy", "start": 8, "stop": 16}, "outside its limits"),
]  # fmt: skip


def _device(r, value):
    """Stand-ins for devices in REFUSED (the fixtures are made per test)."""
    named = {
        "beam_current": lambda: r.beam_current,
        "read_only": lambda: r.beam_current.current,
        "x_only": XOnlyStage,
        "sample_x": lambda: r.sample.x,
        "sized": lambda: SizedCamera(name="camera"),
        "pseudo3": lambda: SPseudo3x3(name="p3"),
        "energy": lambda: r.energy,
    }
    return named[value]() if isinstance(value, str) and value in named else value


def _state(r):
    reals = [getattr(r.energy, a).user_setpoint.get() for a in ("mono", "zp_z", "det_z")]
    axes = (r.sample.x.position, r.sample.z.position, r.sample.theta.position)
    return reals, axes, r.sample.theta.velocity.get(), r.shutter.get(), r.flyer.calls


def _case_id(plan, kwargs) -> str:
    return plan + ":" + ",".join(f"{key}={value!r:.20}" for key, value in kwargs.items())


@pytest.mark.parametrize(
    ("plan", "kwargs", "fragment"), REFUSED, ids=[_case_id(p, k) for p, k, _ in REFUSED]
)
def test_every_plan_refuses_bad_input_before_any_message(rig, plan, kwargs, fragment):
    kwargs = {key: _device(rig, value) for key, value in kwargs.items()}
    before = _state(rig)
    started = time.monotonic()
    with pytest.raises(PlanArgumentError, match=fragment):
        next(iter(PLANS[plan](rig, **kwargs)))
    assert time.monotonic() - started < 2.0  # sizes first: no point list of millions
    assert _state(rig) == before


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_every_plan_accepts_the_baseline_of_its_refusals(rig, plan):
    # Each refusal above changes one thing in an otherwise valid call.
    message = next(iter(PLANS[plan](rig)))
    assert isinstance(message, Msg)


def test_refusal_through_the_run_engine_opens_no_run(rig):
    RE = RunEngine({})
    documents = []
    RE.subscribe(lambda name, doc: documents.append(name))
    for plan, kwargs in [("tomo_scan", {"camera": rig.beam_current}),
                         ("tomo_scan", {"shutter": None}),
                         ("tomo_scan", {"sample_out_offset_um": 5}),
                         ("xanes_2d", {"num_frames": 10**6}),
                         ("line_scan", {"num": 10**7})]:  # fmt: skip
        with pytest.raises(PlanArgumentError):
            RE(PLANS[plan](rig, **kwargs))
    assert documents == []


def test_limit_is_raised_for_one_call(rig):
    slow = {"exposure_s": 300.0}  # 361 projections + darks and flats: about 32 h
    with pytest.raises(
        PlanArgumentError, match=r"at 30 h 20 min, beyond .* pass max_duration_s=109208"
    ):
        next(iter(PLANS["tomo_scan"](rig, num_projections=361, **slow)))
    message = next(iter(PLANS["tomo_scan"](rig, num_projections=361, max_duration_s=2 * 86400,
                                           **slow)))  # fmt: skip
    assert isinstance(message, Msg)
    # The next call has the default limit again.
    with pytest.raises(PlanArgumentError, match="beyond max_duration_s"):
        next(iter(PLANS["tomo_scan"](rig, num_projections=361, **slow)))
    unlimited = PLANS["xanes_2d"](rig, exposure_s=5000.0, max_duration_s=math.inf)
    assert isinstance(next(iter(unlimited)), Msg)


def test_raised_limit_runs_to_the_end(rig):
    camera = FakeCamera(name="camera")
    camera.cam.acquire_time.put(1000.0)  # 100 points of 1000 s: beyond a day
    with pytest.raises(PlanArgumentError, match="line_scan is estimated at 27 h"):
        next(iter(line_scan([camera], rig.sample.x, 0, 1, 100)))
    RE = RunEngine({})
    stops = []
    RE.subscribe(lambda name, doc: stops.append(doc) if name == "stop" else None)
    RE(line_scan([camera], rig.sample.x, 0, 1, 100, max_duration_s=2 * 86400))
    assert stops[0]["exit_status"] == "success" and stops[0]["num_events"]["primary"] == 100


def test_flats_need_no_offset_when_none_are_taken(rig):
    message = next(iter(PLANS["tomo_scan"](rig, flat_policy="none", num_flats=0,
                                           sample_out_offset_um=5)))  # fmt: skip
    assert isinstance(message, Msg)


def test_field_of_view_from_the_camera_and_the_pixel():
    camera = SizedCamera(name="camera")
    assert field_of_view_um(camera, 0.26) == pytest.approx(512 * 0.26)
    assert field_of_view_um(camera, None) == pytest.approx(66.56)  # the TXM's widest field
    assert field_of_view_um(FakeCamera(name="camera"), 0.26) == pytest.approx(66.56)
    assert require_duration_within("p", 86400.0) == MAX_RUN_DURATION_S == 86400.0


def test_line_scan_steps_the_energy_pseudo_axis(rig):
    energy = rig.energy
    RE = RunEngine({})
    documents = []
    RE.subscribe(lambda name, doc: documents.append((name, doc)))
    RE(line_scan([det], energy, 8.0, 8.4, 5))
    events = [doc["data"] for name, doc in documents if name == "event"]
    np.testing.assert_allclose([e["energy_energy"] for e in events], [8.0, 8.1, 8.2, 8.3, 8.4])
    # the optics followed: zone plate and detector at the thin lens of each energy
    for e in events:
        assert e["energy_zp_z"] == pytest.approx(thin_lens(e["energy_energy"])[0])
    assert energy.energy.position == pytest.approx(8.4)


def test_line_scan_over_a_pseudo_single_axis(rig):
    plan = line_scan([det], rig.energy.energy, 8.0, 8.4, 3)
    assert [m.command for m in plan].count("set") == 3
