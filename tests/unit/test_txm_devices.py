"""TXM devices, factories and verbs in fake mode (``ophyd.sim.make_fake_device``, no IOC).

The energy pseudo axis is checked against :mod:`multiscope.analysis.optics` (the
thin lens and the focus calibration are never re-derived here), and every refusal
is checked to leave every fake motor's setpoint where it was.
"""

from __future__ import annotations

import importlib
import inspect
import json
import typing

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.protocols import Configurable, Movable, Readable, Stageable, Triggerable
from bluesky.simulators import RunEngineSimulator
from fakes import instant_motor as _instant_motor
from ophyd import Device, PositionerBase
from ophyd.areadetector import DetectorBase
from ophyd.sim import make_fake_device
from ophyd.utils import LimitError

from multiscope.analysis.optics import FocusCalibration, focal_length_mm, lens_distances_mm
from multiscope.devices import txm as txm_devices
from multiscope.instruments import txm
from multiscope.plan_stubs import txm as txm_stubs

D_UM = 60.0  # zone-plate diameter
DR_NM = 30.0  # outermost zone width
LIMITS = {"mono": (5.0, 15.0), "zp_z": (5.0, 25.0), "det_z": (300.0, 1200.0),
          "zp_x": (-500.0, 500.0), "zp_y": (-500.0, 500.0)}  # fmt: skip


def thin_lens(energy_keV, magnification=50.0):
    """(zp_z, det_z) from analysis.optics."""
    p, q = lens_distances_mm(focal_length_mm(D_UM, DR_NM, energy_keV), magnification)
    return p, p + q


@pytest.fixture
def energy():
    device = make_fake_device(txm_devices.TXMEnergy)("TXM:", name="energy")
    device.zp_diameter_um.sim_put(D_UM)
    device.zp_outermost_zone_nm.sim_put(DR_NM)
    zp_z, det_z = thin_lens(8.0)
    _instant_motor(device.mono, 8.0, LIMITS["mono"], velocity=1.0)
    _instant_motor(device.zp_z, zp_z, LIMITS["zp_z"], velocity=2.0)
    _instant_motor(device.det_z, det_z, LIMITS["det_z"], velocity=20.0)
    _instant_motor(device.zp_x, 12.0, LIMITS["zp_x"], velocity=100.0)  # hand-aligned, um
    _instant_motor(device.zp_y, -3.0, LIMITS["zp_y"], velocity=100.0)
    return device


def setpoints(device):
    return {axis: getattr(device, axis).user_setpoint.get() for axis in ("mono", "zp_z", "det_z")}


def calibration_4():
    """Smooth corrections measured at four energies (mm)."""
    energies = [7.0, 8.0, 9.0, 10.0]
    return FocusCalibration(
        energies,
        {
            "zp_z": [0.010, 0.020, 0.025, 0.028],
            "det_z": [-0.5, -0.2, 0.1, 0.3],
            "zp_x": [0.001, 0.002, 0.003, 0.004],  # mm: the zone plate at 1-4 um across
        },
    )


# -- energy pseudo axis ---------------------------------------------------------------


def test_forward_inverse_round_trip(energy):
    for e in (5.0, 7.1, 8.333, 11.0, 15.0):
        reals = energy.forward(e)
        assert reals.mono == pytest.approx(e)
        assert energy.inverse(reals).energy == pytest.approx(e)
    assert energy.position.energy == pytest.approx(8.0)


@pytest.mark.parametrize("e", [5.5, 7.0, 8.0, 8.333, 10.0, 14.5])
def test_thin_lens_focus_positions_match_analysis_optics(energy, e):
    reals = energy.forward(e)
    zp_z, det_z = thin_lens(e)
    assert reals.zp_z == pytest.approx(zp_z, rel=1e-12)
    assert reals.det_z == pytest.approx(det_z, rel=1e-12)
    # magnification constant: q / p = M at every energy
    assert (reals.det_z - reals.zp_z) / reals.zp_z == pytest.approx(50.0)


def test_magnification_is_a_setting(energy):
    energy.magnification.put(40.0)
    reals = energy.forward(8.0)
    assert (reals.det_z - reals.zp_z) / reals.zp_z == pytest.approx(40.0)
    assert reals.zp_z == pytest.approx(thin_lens(8.0, 40.0)[0])


def test_zone_plate_parameters_read_from_the_ioc_every_time(energy):
    before = energy.forward(8.0).zp_z
    energy.zp_diameter_um.sim_put(2 * D_UM)  # no cached hardware state
    assert energy.forward(8.0).zp_z == pytest.approx(2 * before)


def test_calibration_offsets_applied_through_spline(energy):
    cal = calibration_4()
    energy.calibration.put(cal.to_dict())
    for e in (7.0, 7.4, 8.35, 9.0, 9.8):
        reals = energy.forward(e)
        zp_z, det_z = thin_lens(e)
        assert reals.zp_z == pytest.approx(zp_z + cal.offset("zp_z", e), abs=1e-12)
        assert reals.det_z == pytest.approx(det_z + cal.offset("det_z", e), abs=1e-12)
    # between the calibration energies the cubic spline differs from a straight line
    linear = np.interp(8.5, cal.energies_keV, cal.offsets["det_z"])
    assert cal.offset("det_z", 8.5) != pytest.approx(linear, abs=1e-6)
    assert energy.forward(8.5).det_z == pytest.approx(thin_lens(8.5)[1] + cal.offset("det_z", 8.5))


def test_calibration_signal_accepts_object_json_and_clears(energy):
    cal = calibration_4()
    energy.calibration.put(cal)
    assert energy.calibration.get() == cal.to_dict()
    energy.calibration.put(json.dumps(cal.to_dict()))
    assert energy.focus_calibration().covers == (7.0, 10.0)
    reading = energy.read_configuration()["energy_calibration"]["value"]
    assert json.loads(reading) == cal.to_dict()
    energy.calibration.put({})
    assert energy.forward(12.0).zp_z == pytest.approx(thin_lens(12.0)[0])
    with pytest.raises(ValueError, match="strictly increasing"):
        energy.calibration.put({"energies_keV": [8.0, 7.0], "offsets": {}})


def _commands(motor):
    """Record every setpoint put to ``motor`` (after the fixture's instant arrival)."""
    puts = []
    arrive = motor.user_setpoint._put_func

    def record(value, *args, **kwargs):
        puts.append(value)
        arrive(value, *args, **kwargs)

    motor.user_setpoint.sim_set_putter(record)
    return puts


def test_uncalibrated_zone_plate_xy_is_never_commanded(energy):
    puts = {axis: _commands(getattr(energy, axis)) for axis in ("zp_x", "zp_y")}
    energy.calibration.put(FocusCalibration([7.0, 10.0], {"zp_z": [0.01, 0.02]}))
    assert energy.commanded_axes() == ("mono", "zp_z", "det_z")
    reals = energy.forward(9.0)
    assert (reals.zp_x, reals.zp_y) == (12.0, -3.0)  # where the hand alignment left it
    energy.set(9.0).wait(5)
    assert puts == {"zp_x": [], "zp_y": []}
    assert (energy.zp_x.position, energy.zp_y.position) == (12.0, -3.0)


def test_calibrated_zone_plate_xy_follows_the_spline_in_um(energy):
    cal = calibration_4()  # zp_x in mm; no zp_y: that axis stays where it is
    energy.calibration.put(cal)
    assert energy.commanded_axes() == ("mono", "zp_z", "det_z", "zp_x")
    puts = _commands(energy.zp_y)
    for e in (7.0, 8.35, 9.8):
        assert energy.forward(e).zp_x == pytest.approx(cal.offset("zp_x", e) * 1e3, abs=1e-9)
    energy.set(8.35).wait(5)
    assert energy.zp_x.position == pytest.approx(cal.offset("zp_x", 8.35) * 1e3)
    assert 2.0 < energy.zp_x.position < 3.0 and puts == []
    # the slowest commanded axis sets the timeout; zp_x counts now
    energy.zp_x.velocity.sim_put(1e-3)
    assert energy.move_timeout(9.0) > (cal.offset("zp_x", 9.0) * 1e3 - 2.35) / 1e-3


def test_calibrated_zone_plate_xy_outside_its_limits_refused_without_motion(energy):
    energy.zp_y.user_setpoint.sim_set_limits((-2.0, 2.0))
    energy.calibration.put(
        FocusCalibration([7.0, 10.0], {"zp_x": [0.001, 0.001], "zp_y": [0.0, 0.004]})
    )
    energy.set(7.5).wait(5)  # zp_y 0.67 um: inside
    assert energy.zp_y.position == pytest.approx(2 / 3, abs=1e-9)
    before = {axis: getattr(energy, axis).user_setpoint.get() for axis in LIMITS}
    with pytest.raises(LimitError, match=r"zp_y target 3.33.* outside soft limits \[-2.0, 2.0\]"):
        energy.set(9.5)
    assert {axis: getattr(energy, axis).user_setpoint.get() for axis in LIMITS} == before


def test_sequential_energy_moves_refused():
    with pytest.raises(ValueError, match="concurrently"):
        make_fake_device(txm_devices.TXMEnergy)("TXM:", name="energy", concurrent=False)


def test_move_sets_every_real_axis_with_finite_timeout(energy):
    status = energy.set(8.35)
    status.wait(5)
    zp_z, det_z = thin_lens(8.35)
    assert setpoints(energy) == pytest.approx({"mono": 8.35, "zp_z": zp_z, "det_z": det_z})
    assert energy.position.energy == pytest.approx(8.35)
    # longest real move timeout (each axis' own margin) + margin: the mono's 0.35 keV
    # at 1 keV/s here
    expected = max(
        0.35 / 1.0 + 0.2 + energy.mono.move_margin,
        abs(zp_z - thin_lens(8.0)[0]) / 2.0 + 0.2 + energy.zp_z.move_margin,
        abs(det_z - thin_lens(8.0)[1]) / 20.0 + 0.2 + energy.det_z.move_margin,
    )
    assert energy.move_timeout(8.0) > 0
    assert status.timeout == pytest.approx(expected + energy.move_margin)


# -- refusals: nothing moves ----------------------------------------------------------


@pytest.mark.parametrize("bad", [4.9, 15.01, 20.0, -1.0, 0.0, float("nan"), float("inf")])
def test_energy_outside_optics_range_refused_without_motion(energy, bad):
    before = setpoints(energy)
    with pytest.raises(LimitError, match="energy"):
        energy.set(bad)
    with pytest.raises(LimitError, match="energy"):
        energy.check_value((bad,))
    with pytest.raises(LimitError, match="energy"):
        energy.energy.set(bad)
    assert setpoints(energy) == before


def test_out_of_range_error_names_parameter_and_limits(energy):
    with pytest.raises(LimitError) as info:
        energy.set(20.0)
    message = str(info.value)
    assert "energy 20.0 keV" in message and "[5.0, 15.0]" in message


def test_mono_without_limits_refuses_every_energy(energy):
    energy.mono.user_setpoint.sim_set_limits((0, 0))  # (0, 0) means "none" in EPICS
    before = setpoints(energy)
    with pytest.raises(LimitError, match="no soft limits"):
        energy.set(8.35)
    assert setpoints(energy) == before


def test_energy_not_covered_by_calibration_refused_without_motion(energy):
    energy.calibration.put(calibration_4().to_dict())
    before = setpoints(energy)
    with pytest.raises(LimitError, match=r"calibration \[7.0, 10.0\]"):
        energy.set(12.0)  # inside the mono's range, outside the calibration
    assert setpoints(energy) == before
    energy.set(9.5).wait(5)  # covered: moves
    assert energy.mono.user_setpoint.get() == pytest.approx(9.5)


def test_real_axis_target_outside_its_limits_refused_without_motion(energy):
    energy.det_z.user_setpoint.sim_set_limits((300.0, 700.0))
    _, det_z_10 = thin_lens(10.0)
    assert det_z_10 > 700.0
    before = setpoints(energy)
    with pytest.raises(LimitError, match="det_z target .* outside soft limits") as info:
        energy.set(10.0)
    assert "zp_z" not in str(info.value)  # only the failing axis is named
    assert setpoints(energy) == before
    # both axes out at once: both named in one error
    energy.zp_z.user_setpoint.sim_set_limits((5.0, 12.0))
    with pytest.raises(LimitError, match="zp_z target .*; det_z target"):
        energy.set(10.0)
    assert setpoints(energy) == before


def test_bad_optics_configuration_refused(energy):
    energy.magnification.put(0.0)
    with pytest.raises(ValueError, match="magnification"):
        energy.set(8.2)
    energy.magnification.put(50.0)
    energy.zp_outermost_zone_nm.sim_put(0.0)
    with pytest.raises(ValueError, match="zp_outermost_zone_nm"):
        energy.set(8.2)
    assert setpoints(energy)["mono"] == pytest.approx(8.0)


# -- plan stubs -----------------------------------------------------------------------


def test_move_energy_messages(energy):
    sim = RunEngineSimulator()
    msgs = sim.simulate_plan(txm_stubs.move_energy(energy, 8.35))
    assert [m.command for m in msgs] == ["set", "wait"]
    assert msgs[0].obj is energy and msgs[0].args == (8.35,)
    assert msgs[1].kwargs["group"] == msgs[0].kwargs["group"]


@pytest.mark.parametrize(
    ("value", "match"), [(20.0, "energy_keV=20.0"), ("8", "energy_keV must be a number")]
)
def test_move_energy_refuses_before_first_message(energy, value, match):
    before = setpoints(energy)
    with pytest.raises(ValueError, match=match):
        RunEngineSimulator().simulate_plan(txm_stubs.move_energy(energy, value))
    assert setpoints(energy) == before


def test_move_energy_in_run_engine(energy):
    RE = RunEngine({}, call_returns_result=True)
    RE(txm_stubs.move_energy(energy, 9.0))
    zp_z, det_z = thin_lens(9.0)
    assert setpoints(energy) == pytest.approx({"mono": 9.0, "zp_z": zp_z, "det_z": det_z})


@pytest.fixture
def objective():
    device = make_fake_device(txm_devices.Objective)("TXM:", name="objective")
    device.magnification.sim_set_enum_strs(["2x", "8x"])
    return device


@pytest.mark.parametrize(("mode", "setting"), [("large", "2x"), ("high_resolution", "8x")])
def test_set_field_of_view_messages(objective, mode, setting):
    msgs = RunEngineSimulator().simulate_plan(txm_stubs.set_field_of_view(objective, mode))
    assert [m.command for m in msgs] == ["set", "wait"]
    assert msgs[0].obj is objective.magnification and msgs[0].args == (setting,)


def test_set_field_of_view_refuses_unknown_mode(objective):
    with pytest.raises(ValueError, match="mode must be one of"):
        RunEngineSimulator().simulate_plan(txm_stubs.set_field_of_view(objective, "huge"))


@pytest.fixture
def sample():
    device = make_fake_device(txm_devices.SampleStage)("TXM:sample:", name="sample")
    _instant_motor(device.x, 0.0, (-5000.0, 5000.0))
    return device


def test_sample_out_and_in_messages(sample):
    msgs = RunEngineSimulator().simulate_plan(txm_stubs.sample_out(sample, 3000.0))
    assert [(m.command, m.obj, m.args) for m in msgs if m.command == "set"] == [
        ("set", sample.x, (3000.0,))
    ]
    msgs = RunEngineSimulator().simulate_plan(txm_stubs.sample_in(sample, -12.5))
    assert [(m.command, m.args) for m in msgs] == [("set", (-12.5,)), ("wait", ())]


def test_sample_out_past_limit_refused(sample):
    with pytest.raises(LimitError, match="out_x_um=6000.0.*sample_x"):
        RunEngineSimulator().simulate_plan(txm_stubs.sample_out(sample, 6000.0))
    assert sample.x.user_setpoint.get() == 0.0


@pytest.mark.parametrize(("stub", "value"), [("open_shutter", "open"), ("close_shutter", "close")])
def test_shutter_stubs_wait_with_timeout(stub, value):
    shutter = make_fake_device(txm.Shutter)("TXM:shutter:", name="shutter")
    msgs = RunEngineSimulator().simulate_plan(getattr(txm_stubs, stub)(shutter, timeout=3.0))
    assert [(m.command, m.args) for m in msgs] == [("set", (value,)), ("wait", ())]
    assert msgs[1].kwargs["timeout"] == 3.0
    default = RunEngineSimulator().simulate_plan(getattr(txm_stubs, stub)(shutter))
    assert default[1].kwargs["timeout"] == txm_stubs.DEFAULT_SHUTTER_TIMEOUT_S
    with pytest.raises(ValueError, match="timeout"):
        RunEngineSimulator().simulate_plan(getattr(txm_stubs, stub)(shutter, timeout=0))


# -- field of view ----------------------------------------------------------------------


def test_field_of_view_modes():
    modes = txm_devices.field_of_view_modes()
    assert set(modes) == {"large", "high_resolution"}
    assert modes["large"]["objective"] == "2x" and modes["large"]["nominal_pixel_nm"] == 65
    assert modes["high_resolution"]["objective"] == "8x"
    assert modes["high_resolution"]["nominal_pixel_nm"] == 16
    assert modes["large"]["pixel_size_nm"] == pytest.approx(65.0)
    assert modes["high_resolution"]["pixel_size_nm"] == pytest.approx(16.25)
    assert modes["large"]["field_of_view_um"] == pytest.approx(66.56)
    assert modes["high_resolution"]["field_of_view_um"] == pytest.approx(16.64)
    modes["large"]["objective"] = "changed"  # a copy: the module constant is untouched
    assert txm_devices.FIELD_OF_VIEW_MODES["large"]["objective"] == "2x"
    # the simulator's default binning 2 doubles the pixel (docs/txm.md)
    assert txm_devices.effective_pixel_size_nm(2, binning=2) == pytest.approx(130.0)


# -- factories: every device builds fake and follows the protocols ---------------------


def _factories():
    for name in txm.__all__:
        factory = getattr(txm, name)
        if name != "devices" and inspect.isfunction(factory):
            yield pytest.param(name, factory, id=name)


@pytest.mark.parametrize(("name", "factory"), list(_factories()))
def test_txm_factory_builds_fake_device_with_protocols(name, factory, monkeypatch):
    cls = typing.get_type_hints(factory)["return"]
    assert inspect.isclass(cls) and issubclass(cls, Device)
    assert getattr(txm, cls.__name__) is cls
    assert inspect.signature(factory).parameters["prefix"].default == "TXM:"
    monkeypatch.setattr(txm, cls.__name__, make_fake_device(cls))
    fake = factory()
    assert fake.name == name
    assert fake.prefix.startswith("TXM:")
    assert isinstance(fake, Readable) and isinstance(fake, Configurable)
    description = fake.describe()
    streamed = {key for key, info in description.items() if info.get("external") == "STREAM:"}
    assert set(fake.read()) == set(description) - streamed
    for key, info in description.items():
        assert {"source", "dtype", "shape"} <= set(info), key
    assert set(fake.read_configuration()) == set(fake.describe_configuration())
    if isinstance(fake, PositionerBase):
        assert isinstance(fake, Movable)
    if isinstance(fake, DetectorBase):
        assert isinstance(fake, Triggerable) and isinstance(fake, Stageable)


def test_devices_names_every_factory_and_does_not_connect():
    made = txm.devices("TXMTEST:", beam_prefix="SRTEST:")
    factories = {name for name, _ in ((p.values[0], None) for p in _factories())}
    assert set(made) == factories
    assert {
        "condenser",
        "zone_plate",
        "aperture",
        "phase_ring",
        "sample",
        "detector_z",
        "objective",
        "camera",
        "energy",
        "shutter",
        "beam_current",
    } == set(made)
    assert made.pop("beam_current").prefix == "SRTEST:ring:"  # the ring's IOC, not the TXM's
    assert all(device.prefix.startswith("TXMTEST:") for device in made.values())
    assert "beam_current" not in txm.devices("TXMTEST:")
    assert not made["energy"].connected  # nothing connects at construction


def test_contract_pv_names():
    made = txm.devices("TXM:", beam_prefix="SR:")
    energy = made["energy"]
    assert energy.mono.prefix == "TXM:mono:energy"
    assert energy.zp_z.prefix == "TXM:zp:z" and energy.det_z.prefix == "TXM:det:z"
    assert energy.zp_diameter_um.pvname == "TXM:zp:diameter"
    assert energy.zp_outermost_zone_nm.pvname == "TXM:zp:dr"
    assert made["zone_plate"].outermost_zone.pvname == "TXM:zp:dr"
    assert made["phase_ring"].inserted.pvname == "TXM:phase_ring:in"
    assert made["sample"].theta.prefix == "TXM:sample:theta"
    assert made["detector_z"].prefix == "TXM:det:z"
    assert made["objective"].magnification.pvname == "TXM:objective:mag"
    assert made["objective"].pixel_size.pvname == "TXM:optics:pixel_size"
    assert made["camera"].cam.prefix == "TXM:cam1:"
    assert type(made["camera"].cam).bin_x.suffix == "BinX"  # class level: lazy PVs stay unmade
    assert made["condenser"].pitch.prefix == "TXM:cond:pitch"
    assert made["shutter"].prefix == "TXM:shutter:"
    assert made["beam_current"].current.pvname == "SR:ring:current"


def test_modules_import_in_layers():
    # plan stubs may use devices, devices never plan stubs
    source = inspect.getsource(importlib.import_module("multiscope.devices.txm"))
    assert "plan_stubs" not in source and "bluesky" not in source
