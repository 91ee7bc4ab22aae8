"""XRM recipes and the checks of ``xrm_tomo_scan`` / ``scout_and_zoom`` with in-process fakes."""

from types import SimpleNamespace

import pytest
from ophyd import Signal, SoftPositioner

from multiscope.analysis.optics import xrm_pixel_size_um
from multiscope.plans.preflight import PlanArgumentError
from multiscope.plans.xrm import SOURCE_CLEARANCE_MM, XRM_RECIPES, xrm_settings, xrm_tomo_scan
from multiscope.plans.xrm_scout import scout_and_zoom


def _axis(name, limits, position=0.0):
    return SoftPositioner(name=name, limits=limits, init_pos=position)


def fake_xrm():
    """The parts of the XRM bundle the checks read (no IOC)."""
    geometry = SimpleNamespace(
        sod=_axis("geometry_sod", (12.0, 600.0), 67.91),
        odd=_axis("geometry_odd", (10.0, 400.0), 100.0),
        sod_min=Signal(name="sod_min", value=12.0),
        detector_pixel_um=Signal(name="detector_pixel_um", value=13.5),
    )
    sample = SimpleNamespace(x=_axis("sample_x", (-50, 50)), y=_axis("sample_y", (-50, 50)),
                             z=_axis("sample_z", (-60, 60)),
                             theta=_axis("sample_theta", (-720, 720)))  # fmt: skip
    camera = SimpleNamespace(name="camera")
    return SimpleNamespace(source=object(), shutter=object(), turret=object(),
                           geometry=geometry, sample=sample, camera=camera)  # fmt: skip


def test_recipes_hold_the_seeds_numbers():
    assert set(XRM_RECIPES) == {"coin_survey", "coin_zoom", "pouch", "nimh_survey", "nimh_zoom"}
    pouch = XRM_RECIPES["pouch"]
    assert (pouch.objective, pouch.binning, pouch.exposure_s, pouch.filter, pouch.kv,
            pouch.power_w, pouch.n_projections, pouch.pixel_um) == (
        "4x", 2, 15.0, "LE2", 60.0, 6.5, 3201, 3.74)  # fmt: skip
    assert XRM_RECIPES["coin_zoom"].pixel_um == 12.16
    assert XRM_RECIPES["nimh_survey"].filter == "HE4"


@pytest.mark.parametrize("recipe", sorted(XRM_RECIPES))
def test_every_recipe_reaches_its_pixel_within_the_travel(recipe):
    settings = xrm_settings(fake_xrm(), recipe)
    expected = XRM_RECIPES[recipe].pixel_um
    got = xrm_pixel_size_um(13.5, settings.sod_mm, settings.odd_mm, settings.objective,
                            settings.binning)  # fmt: skip
    assert got == pytest.approx(expected, rel=1e-9)
    assert 12.0 <= settings.sod_mm <= 600.0 and 10.0 <= settings.odd_mm <= 400.0


def test_binning_alone_keeps_the_geometry():
    base = xrm_settings(fake_xrm(), "coin_survey")
    binned = xrm_settings(fake_xrm(), "coin_survey", binning=8)
    assert binned.pixel_um == pytest.approx(4 * base.pixel_um)
    assert binned.sod_mm == pytest.approx(base.sod_mm)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sod_mm": 5.0}, "below the instrument's minimum SOD"),
        ({"objective": "10x"}, "not in the turret"),
        ({"filter": "XX9"}, "filter must be one of"),
        ({"kv": 300.0}, "kv"),
        ({"binning": 3}, "binning"),
        ({"exposure_s": 0.0}, "exposure_s"),
        ({"pixel_um": 0.05}, "not reachable"),
        ({"voi_mm": (0.0, 0.0, 100.0)}, "voi_mm z"),
        ({"n_projections": 1}, "n_projections"),
        ({"colour": "blue"}, "unknown recipe overrides"),
        ({"binning": "2"}, "binning"),
        ({"voi_mm": 3.0}, "voi_mm must be"),
        ({"sample_radius_mm": -1.0}, "sample_radius_mm"),
    ],
)
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(PlanArgumentError, match=message):
        xrm_settings(fake_xrm(), "coin_survey", **overrides)


def test_unknown_recipe_is_refused():
    with pytest.raises(PlanArgumentError, match="unknown recipe"):
        xrm_settings(fake_xrm(), "banana")


def test_the_scan_refuses_before_its_first_message():
    xrm = fake_xrm()
    plan = xrm_tomo_scan(xrm, "coin_survey", sod_mm=5.0)
    with pytest.raises(PlanArgumentError, match="minimum SOD"):
        next(plan)
    plan = xrm_tomo_scan(xrm, "coin_survey", flat_policy="every")
    with pytest.raises(PlanArgumentError, match="every"):
        next(plan)
    assert xrm.geometry.sod.position == 67.91  # nothing moved


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"select": "somewhere"}, "select must be"),
        ({"select": (1.0, 2.0)}, r"\(x, y, z\)"),
        ({"select": (0.0, 0.0, 500.0)}, "voi_mm z"),
        ({"zoom": "coin_zoom", "zoom_overrides": {"objective": "10x"}}, "not in the turret"),
        ({"zoom_overrides": {"voi_mm": (0, 0, 0)}}, "comes from select"),
    ],
)
def test_scout_and_zoom_refuses_before_its_first_message(kwargs, message):
    plan = scout_and_zoom(fake_xrm(), **kwargs)
    with pytest.raises(PlanArgumentError, match=message):
        next(plan)


def test_the_rotating_sample_keeps_its_clearance_from_the_source():
    """The coin zoom (SOD ~22 mm) of a 10 mm coin: centred or 2 mm off, fine; 5 mm off
    its centre the rim would sweep within ~7 mm of the source: refused before anything."""
    zoom = xrm_settings(fake_xrm(), "coin_zoom", voi_mm=(1.6, -1.2, 0.0))
    assert zoom.sod_mm - 10.0 - 2.0 > SOURCE_CLEARANCE_MM
    with pytest.raises(PlanArgumentError, match="sweeps within"):
        xrm_settings(fake_xrm(), "coin_zoom", voi_mm=(4.0, -3.0, 0.0))
    # a smaller sample may come that close
    xrm_settings(fake_xrm(), "coin_zoom", voi_mm=(4.0, -3.0, 0.0), sample_radius_mm=5.0)


def _survey_voi(xrm, **kwargs):
    """The survey's ``voi_mm`` in its start document (the plan run up to its open_run)."""
    for msg in scout_and_zoom(xrm, **kwargs):
        if msg.command == "open_run":
            return msg.kwargs["xrm"]["voi_mm"]
    raise AssertionError("no open_run")


def test_the_scouts_survey_centres_the_sample_wherever_the_stage_was_left():
    """A zoom leaves the stage at its VOI; the next survey still puts the sample's centre on
    the rotation axis (the symmetry scout needs the cell's axis there), unless told."""
    xrm = fake_xrm()
    for axis, value in zip("xyz", (1.6, -1.2, -1.25), strict=True):
        getattr(xrm.sample, axis).set(value)
    assert _survey_voi(xrm) == [0.0, 0.0, 0.0]
    assert _survey_voi(xrm, survey_overrides={"voi_mm": (0.5, 0.0, 0.0)}) == [0.5, 0.0, 0.0]
