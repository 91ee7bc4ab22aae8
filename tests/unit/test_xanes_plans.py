"""XANES and focus-calibration plans on in-process fakes (no IOC); the focus metric.

Documents are checked against ``docs/decisions/0006-xanes-run-documents.md``;
every refusal is checked to emit no document and move nothing.
"""

import json
import threading

import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.suspenders import SuspendBoolHigh
from fakes import (
    D_UM,
    DR_NM,
    FakeCamera,
    FakeShutter,
    FakeStage,
    defocus_blur_px,
    fake_txm_energy,
    thin_lens,
)
from fakes import event_streams as _streams
from ophyd import Signal
from scipy import ndimage

from multiscope.analysis.focus import (
    brenner_gradient,
    effective_focal_length_mm,
    find_focus_peak,
    focus_offsets_mm,
    normalized_variance,
    sharpness,
)
from multiscope.analysis.optics import FocusCalibration, focal_length_mm
from multiscope.plan_stubs.xanes import (
    BLOCK_OVERHEAD_S,
    estimate_energy_moves_s,
    estimate_moves_s,
)
from multiscope.plans import calibration as calibration_plans
from multiscope.plans import xanes as xanes_plans
from multiscope.plans.calibration import FocusNotFoundError, focus_calibration
from multiscope.plans.preflight import PlanArgumentError
from multiscope.plans.xanes import energy_grid, xanes_2d, xanes_3d, xanes_campaign
from multiscope.session import INSTRUMENTS

ENERGIES = [8.28, 8.30, 8.32, 8.333, 8.35, 8.37, 8.40, 8.43]
#: The start document's xanes block, key for key (decision 0006).
XANES_KEYS = {
    "edge", "edge_keV", "energies_keV", "pre_edge_keV", "post_edge_keV", "whiteline_keV",
    "flat_policy", "flat_every", "num_frames", "num_flats", "num_darks", "image_field",
    "energy_field", "energy_index_field", "pixel_size_um", "sample_id",
}  # fmt: skip


@pytest.fixture
def energy():
    return fake_txm_energy()


@pytest.fixture
def rig(energy):
    return (
        FakeCamera(name="camera"),
        energy,
        FakeStage(name="sample"),
        FakeShutter(name="shutter", value="close"),
    )


@pytest.fixture
def recorded():
    RE = RunEngine({})
    documents = []
    RE.subscribe(lambda name, doc: documents.append((name, doc)))
    return RE, documents


def _state(energy, sample, shutter):
    reals = {axis: getattr(energy, axis).user_setpoint.get() for axis in ("mono", "zp_z", "det_z")}
    return reals, sample.x.position, sample.theta.position, shutter.get()


def _descriptors(documents):
    return {doc["name"]: doc for name, doc in documents if name == "descriptor"}


def test_plans_registered_for_the_txm_session():
    modules = INSTRUMENTS["txm"].plan_modules
    assert "multiscope.plans.xanes" in modules and "multiscope.plans.calibration" in modules
    assert xanes_plans.__all__ == ["energy_grid", "xanes_2d", "xanes_3d", "xanes_campaign"]
    assert calibration_plans.__all__ == ["focus_calibration"]


# -- refusals: no document, no motion ---------------------------------------------------


def _calibrated_7_to_8(energy):
    energy.calibration.put(FocusCalibration([7.0, 7.5, 8.0], {"zp_z": [0.01, 0.02, 0.0]}))


@pytest.mark.parametrize(
    ("setup", "kwargs", "fragment"),
    [
        (None, {"grid": energy_grid("Ni", energies_keV=[14.9, 15.2, 15.3, 15.5, 15.6, 15.7],
                                    edge_keV=15.3, fine_start_eV=-50, fine_stop_eV=100,
                                    whiteline_eV=(-200, 400))},
         r"energies \[15.2, 15.3, 15.5, 15.6, 15.7\] keV outside the optics' range \[5.0, 15.0\]"),  # noqa: E501
        (_calibrated_7_to_8, {}, r"not covered by the focus calibration \[7.0, 8.0\] keV"),
        (lambda e: e.det_z.user_setpoint.sim_set_limits((300.0, 1200.0)), {},
         "det_z target .* outside soft limits"),
        (lambda e: e.mono.user_setpoint.sim_set_limits((0, 0)), {}, "no soft limits"),
        (None, {"grid": [8.3, 8.35, 8.4]}, "grid must be energy_grid"),
        (None, {"grid": "Qq"}, "unknown edge"),
        (None, {"flat_policy": "sometimes"}, "flat_policy must be one of"),
        (None, {"flat_policy": "every_n"}, "flat_every .* is required"),
        (None, {"flat_policy": "interpolate", "flat_every": 0}, "flat_every must be in"),
        (None, {"flat_every": 2}, "flat_every is only used"),
        (None, {"filter": "Pb_1mm"}, "filter must be one of"),
        (None, {"exposure_s": 0}, "exposure_s must be > 0"),
        (None, {"num_frames": 0}, "num_frames must be >= 1"),
        (None, {"num_flats": 0}, "num_flats must be >= 1"),
        (None, {"sample_out_offset_um": 0}, "must be non-zero"),
        (None, {"sample_out_offset_um": 900}, "outside its limits"),
        (None, {"sample_id": 3}, "sample_id must be a string"),
    ],
)  # fmt: skip
def test_xanes_2d_refuses_before_any_document(rig, recorded, setup, kwargs, fragment):
    camera, energy, sample, shutter = rig
    RE, documents = recorded
    if setup is not None:
        setup(energy)
    before = _state(energy, sample, shutter)
    arguments = {"grid": energy_grid("Ni", energies_keV=ENERGIES, whiteline_eV=(-5, 40)),
                 **kwargs}  # fmt: skip
    with pytest.raises(PlanArgumentError, match=fragment):
        RE(xanes_2d(camera, energy, sample, shutter, **arguments))
    assert documents == []  # no run
    assert _state(energy, sample, shutter) == before  # nothing moved


def test_non_increasing_grid_refused_before_a_plan_exists():
    with pytest.raises(PlanArgumentError, match="strictly increasing"):
        energy_grid("Ni", energies_keV=[8.30, 8.35, 8.34, 8.40])


# -- 2D documents -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "every", "flat_at"),
    [("every", None, list(range(8))), ("every_n", 3, [0, 3, 6]), ("interpolate", 3, [0, 3, 6, 7])],
)
def test_xanes_2d_documents_follow_decision_0006(rig, recorded, policy, every, flat_at):
    camera, energy, sample, shutter = rig
    RE, documents = recorded
    grid = energy_grid("Ni", energies_keV=ENERGIES, whiteline_eV=(-5, 40))
    RE(xanes_2d(camera, energy, sample, shutter, grid, exposure_s=0.02, num_frames=2,
                flat_policy=policy, flat_every=every, num_flats=3, num_darks=4,
                pixel_size_um=0.26, sample_id="tab 3", filter="Al_50um"))  # fmt: skip
    start = next(doc for name, doc in documents if name == "start")
    assert start["plan_name"] == "xanes_2d" and start["sample_id"] == "tab 3"
    assert start["num_points"] == 16 and start["estimated_duration_s"] > 0
    assert start["hints"] == {"dimensions": [(["energy_energy"], "primary")]}
    assert start["filter"] == "Al_50um" and start["plan_args"]["exposure_s"] == 0.02
    xanes = start["xanes"]
    assert set(xanes) == XANES_KEYS
    assert xanes == {
        **grid.to_md(), "flat_policy": policy, "flat_every": every or 1, "num_frames": 2,
        "num_flats": 3, "num_darks": 4, "image_field": "camera_image",
        "energy_field": "energy_energy", "energy_index_field": "xanes_energy_index",
        "pixel_size_um": 0.26, "sample_id": "tab 3",
    }  # fmt: skip
    assert json.loads(json.dumps(xanes)) == xanes

    streams, descriptors = _streams(documents), _descriptors(documents)
    assert set(descriptors["dark"]["data_keys"]) == {"camera_image"}  # image only
    for stream in ("flat", "primary"):
        keys = descriptors[stream]["data_keys"]
        assert {"camera_image", "energy_energy", "xanes_energy_index"} <= set(keys)
        assert keys["xanes_energy_index"]["dtype"] == "integer"
    assert len(streams["dark"]) == 4
    primary = streams["primary"]
    assert [d["xanes_energy_index"] for d in primary] == [i for i in range(8) for _ in range(2)]
    for data in primary + streams["flat"]:
        e = ENERGIES[data["xanes_energy_index"]]
        assert data["energy_energy"] == pytest.approx(e)
        # every frame in focus: zone plate and detector at the thin lens of its energy
        assert data["energy_zp_z"] == pytest.approx(thin_lens(e)[0])
        assert data["energy_det_z"] == pytest.approx(thin_lens(e)[1])
    flat_index = [d["xanes_energy_index"] for d in streams["flat"]]
    assert flat_index == [i for i in flat_at for _ in range(3)]
    assert sum(name == "event" for name, doc in documents) == 4 + 3 * len(flat_at) + 16
    # Frames at the plan's exposure; the camera's own exposure back afterwards (safe state).
    assert (
        descriptors["primary"]["configuration"]["camera"]["data"]["camera_cam_acquire_time"] == 0.02
    )
    assert camera.cam.acquire_time.get() == 0.1
    assert sample.x.position == 0 and shutter.get() == "close"
    assert next(doc for name, doc in documents if name == "stop")["exit_status"] == "success"


def test_flats_come_before_the_sample_frames_of_their_energy(rig, recorded):
    camera, energy, sample, shutter = rig
    RE, documents = recorded
    grid = energy_grid("Ni", energies_keV=ENERGIES[:4], whiteline_eV=(-60, 40),
                       pre_edge_eV=(-60, -10), post_edge_eV=(-20, 10))  # fmt: skip
    RE(xanes_2d(camera, energy, sample, shutter, grid, flat_policy="every_n", flat_every=2,
                num_flats=1, num_darks=1))  # fmt: skip
    names = {doc["uid"]: doc["name"] for name, doc in documents if name == "descriptor"}
    sequence = [(names[d["descriptor"]], d["data"].get("xanes_energy_index"))
                for n, d in documents if n == "event"]  # fmt: skip
    assert sequence == [("dark", None), ("flat", 0), ("primary", 0), ("primary", 1),
                        ("flat", 2), ("primary", 2), ("primary", 3)]  # fmt: skip


def test_a_string_grid_takes_the_default_grid(rig):
    camera, energy, sample, shutter = rig
    plan = xanes_2d(camera, energy, sample, shutter, "Ni", num_darks=1, num_flats=1)
    open_run = next(plan)  # the checks ran; nothing has been sent to a RunEngine
    assert open_run.command == "open_run"
    assert len(open_run.kwargs["xanes"]["energies_keV"]) == 63


# -- 3D -----------------------------------------------------------------------------------


def test_xanes_3d_is_one_run_of_tomograms(rig, recorded):
    camera, energy, sample, shutter = rig
    RE, documents = recorded
    grid = energy_grid("Ni", energies_keV=ENERGIES[:3], whiteline_eV=(-60, 0),
                       pre_edge_eV=(-60, -25), post_edge_eV=(-40, 0))  # fmt: skip
    RE(xanes_3d(camera, energy, sample, shutter, grid, num_projections=6, exposure_s=0.01,
                flat_policy="every_n", flat_every=2, tomo_flat_policy="both", num_flats=2,
                num_darks=3, center_guess_px=1.5))  # fmt: skip
    starts = [doc for name, doc in documents if name == "start"]
    assert len(starts) == 1
    start = starts[0]
    assert start["plan_name"] == "xanes_3d" and start["num_points"] == 18
    assert set(start["xanes"]) == XANES_KEYS and start["xanes"]["num_frames"] == 6
    tomo = start["tomo"]
    assert tomo["rotation"] == "sample_theta" and tomo["num_projections"] == 6
    assert tomo["flat_policy"] == "both" and tomo["center_guess_px"] == 1.5
    streams, descriptors = _streams(documents), _descriptors(documents)
    assert {"camera_image", "sample_theta", "energy_energy", "xanes_energy_index"} <= set(
        descriptors["primary"]["data_keys"]
    )
    primary = streams["primary"]
    assert [d["xanes_energy_index"] for d in primary] == [i for i in range(3) for _ in range(6)]
    np.testing.assert_allclose([d["sample_theta"] for d in primary], np.tile(np.arange(6) * 30, 3))
    # flats at energies 0 and 2, two sets each (start and end of the tomogram), 2 frames a set
    assert [d["xanes_energy_index"] for d in streams["flat"]] == [0] * 4 + [2] * 4
    assert len(streams["dark"]) == 3
    for data in primary:
        assert data["energy_zp_z"] == pytest.approx(
            thin_lens(ENERGIES[data["xanes_energy_index"]])[0]
        )
    assert sample.x.position == 0 and shutter.get() == "close"


def test_xanes_3d_refuses_angles_outside_the_limits(rig, recorded):
    camera, energy, sample, shutter = rig
    RE, documents = recorded
    with pytest.raises(PlanArgumentError, match="angles: sample_theta"):
        RE(xanes_3d(camera, energy, sample, shutter, "Ni", start_deg=700))
    with pytest.raises(PlanArgumentError, match="contradicts"):
        RE(xanes_3d(camera, energy, sample, shutter, "Ni", tomo_flat_policy="none"))
    assert documents == []


# -- campaigns ----------------------------------------------------------------------------


def test_campaign_makes_one_run_per_edge_sharing_campaign_id(rig, recorded):
    camera, energy, sample, shutter = rig
    RE, documents = recorded
    ni = energy_grid("Ni", energies_keV=ENERGIES, whiteline_eV=(-5, 40))
    uids = RE(xanes_campaign(
        camera, energy, sample, shutter,
        [{"grid": "Co", "exposure_s": 0.2, "filter": "none"},
         {"grid": ni, "exposure_s": 0.1, "filter": "Al_50um", "num_frames": 2}],
        flat_policy="every_n", flat_every=4, num_flats=1, num_darks=1, sample_id="tab 3",
        md={"operator": "x"},
    ))  # fmt: skip
    starts = [doc for name, doc in documents if name == "start"]
    assert len(uids) == 2 and [s["uid"] for s in starts] == list(uids)
    assert len({s["campaign_id"] for s in starts}) == 1
    assert [s["xanes"]["edge"] for s in starts] == ["Co", "Ni"]
    assert [s["filter"] for s in starts] == ["none", "Al_50um"]
    assert [s["plan_args"]["exposure_s"] for s in starts] == [0.2, 0.1]
    assert [s["xanes"]["num_frames"] for s in starts] == [1, 2]
    assert [s["campaign"]["index"] for s in starts] == [0, 1]
    assert all(s["campaign"]["edges"] == ["Co", "Ni"] for s in starts)
    assert all(s["operator"] == "x" and s["sample_id"] == "tab 3" for s in starts)


@pytest.mark.parametrize(
    ("edges", "fragment"),
    [
        ([{"grid": "Co"}, {"grid": "Ni", "filter": "Pb_1mm"}], r"edges\[1\] \(Ni\): filter"),
        ([{"grid": "Co"}, {"grid": "Ni", "frames": 2}], r"edges\[1\] \(Ni\): .*'frames'"),
        ([{"grid": "Co"}, {"exposure_s": 1}], r"edges\[1\] must be a dict with a 'grid'"),
        ([{"grid": "Co"}, {"grid": "Zz"}], r"edges\[1\]: unknown edge"),
        ([], "non-empty list"),
        (5, "non-empty list"),
    ],
)
def test_campaign_validates_every_run_before_the_first(rig, recorded, edges, fragment):
    camera, energy, sample, shutter = rig
    RE, documents = recorded
    before = _state(energy, sample, shutter)
    with pytest.raises(PlanArgumentError, match=fragment):
        RE(xanes_campaign(camera, energy, sample, shutter, edges, num_darks=1, num_flats=1))
    assert documents == [] and _state(energy, sample, shutter) == before


# -- focus metric (pure) ------------------------------------------------------------------


def _pattern(seed=0, shape=(64, 64)):
    rng = np.random.default_rng(seed)
    return 1000.0 * (1 + 0.5 * (ndimage.gaussian_filter(rng.random(shape), 1.0) > 0.5))


def test_metrics_known_values():
    image = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    assert normalized_variance(image) == pytest.approx(np.var(image) / 2.0)
    assert brenner_gradient(image) == pytest.approx(4.0 / 4.0)  # (3 - 1)^2 across / mean^2
    assert normalized_variance(np.full((5, 5), 7.0)) == 0.0
    assert sharpness(image, "brenner") == brenner_gradient(image)


def test_metrics_fall_with_blur_and_work_on_stacks():
    image = _pattern()
    stack = np.stack([ndimage.gaussian_filter(image, s) for s in (0.01, 0.5, 1.0, 2.0, 4.0)])
    for metric in (normalized_variance, brenner_gradient):
        values = metric(stack)
        assert values.shape == (5,) and np.all(np.diff(values) < 0)
    # Brenner is scale-free; the normalised variance scales with the flux.
    assert brenner_gradient(3 * image) == pytest.approx(brenner_gradient(image))
    assert normalized_variance(3 * image) == pytest.approx(3 * normalized_variance(image))


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        (np.zeros((8, 8)), "positive mean"),
        (np.ones((2, 8)), "at least 3 x 3"),
        (np.ones(9), "3 x 3"),
    ],
)
def test_metrics_refuse_unusable_images(image, fragment):
    with pytest.raises(ValueError, match=fragment):
        normalized_variance(image)
    with pytest.raises(ValueError, match="metric must be one of"):
        sharpness(np.ones((4, 4)), "laplacian")


def test_peak_found_between_samples():
    x = np.linspace(-0.4, 0.4, 9)
    assert find_focus_peak(x, 5 - (x - 0.037) ** 2).position == pytest.approx(0.037, abs=1e-9)
    # a bell curve: the 5-point parabola is within a tenth of a step
    peak = find_focus_peak(x[::-1], np.exp(-((x[::-1] - 0.062) ** 2) / 0.08))  # any order
    assert peak.fitted and not peak.at_edge and peak.position == pytest.approx(0.062, abs=0.01)
    edge = find_focus_peak(x, -x)  # still rising at the scan's start
    assert edge.at_edge and not edge.fitted and edge.position == pytest.approx(-0.4)
    noisy = find_focus_peak(x, [0, 0, 0.9, 0, 1, 0, 0.9, 0, 0])
    assert not noisy.fitted and noisy.position == 0.0  # no downward parabola: the best sample


def test_peak_refuses_bad_input():
    with pytest.raises(ValueError, match="at least 3"):
        find_focus_peak([1, 2], [1, 2])
    with pytest.raises(ValueError, match="distinct"):
        find_focus_peak([1, 1, 2], [1, 2, 1])


def test_focus_offsets_fixed_and_constant_magnification():
    p, length = thin_lens(8.3)
    assert focus_offsets_mm(p + 0.1, length, p, length, 50.0, "fixed") == pytest.approx((0.1, 0))
    zp_off, det_off = focus_offsets_mm(p + 0.1, length, p, length, 50.0, "magnification")
    f = effective_focal_length_mm(p + 0.1, length)
    assert 1 / (p + zp_off) + 1 / (length + det_off - p - zp_off) == pytest.approx(1 / f)
    assert (length + det_off - p - zp_off) / (p + zp_off) == pytest.approx(50.0)
    assert effective_focal_length_mm(p, length) == pytest.approx(focal_length_mm(D_UM, DR_NM, 8.3))
    with pytest.raises(ValueError, match="detector must be one of"):
        focus_offsets_mm(p, length, p, length, 50.0, "tilt")


# -- focus calibration --------------------------------------------------------------------


def true_offset_mm(energy_keV):
    """Where the fake's image is sharpest, from the thin lens (mm): smooth in energy."""
    return 0.07 + 0.3 * (energy_keV - 8.3)


@pytest.fixture
def focus_camera(energy):
    camera = FakeCamera(name="camera")  # its image blurs as the zone plate leaves the focus
    pattern = _pattern()

    def render():
        e = energy.mono.position
        defocus_um = abs(energy.zp_z.position - thin_lens(e)[0] - true_offset_mm(e)) * 1e3
        sigma = defocus_blur_px(defocus_um)
        return ndimage.gaussian_filter(pattern, sigma) if sigma > 0.05 else pattern

    camera.image.sim_set_func(render)
    return camera


def test_calibration_finds_a_known_focus_and_writes_it(focus_camera, energy, recorded):
    RE, documents = recorded
    shutter = FakeShutter(name="shutter", value="close")
    energies = [8.25, 8.35, 8.45]
    RE(focus_calibration(focus_camera, energy, shutter, energies, zp_z_range_mm=0.4,
                         zp_z_step_mm=0.1, sample_id="tab"))  # fmt: skip
    start = next(doc for name, doc in documents if name == "start")
    block = start["focus_calibration"]
    assert start["plan_name"] == "focus_calibration" and start["num_points"] == 27
    assert block["zp_z_offsets_mm"] == pytest.approx(np.arange(-4, 5) * 0.1)
    assert block["thin_lens_zp_z_mm"] == pytest.approx([thin_lens(e)[0] for e in energies])
    assert block["previous_calibration"] == {} and block["metric"] == "normalized_variance"
    streams = _streams(documents)
    assert len(streams["primary"]) == 27
    assert [d["focus_energy_index"] for d in streams["primary"]] == [i for i in range(3)
                                                                     for _ in range(9)]  # fmt: skip
    found = streams["focus"]
    errors = [d["focus_zp_z_offset_mm"] - true_offset_mm(d["focus_energy_keV"]) for d in found]
    assert np.all(np.abs(errors) < 0.02), errors  # a fifth of the 0.1 mm step
    calibration = energy.focus_calibration()
    assert calibration.energies_keV == energies
    assert calibration.offsets["zp_z"] == pytest.approx([d["focus_zp_z_offset_mm"] for d in found])
    assert calibration.offsets["det_z"] == [0.0, 0.0, 0.0]  # detector="fixed"
    # The optics end in focus (calibrated) at the start energy clipped to the range.
    assert energy.mono.position == pytest.approx(8.25)
    assert energy.zp_z.position - thin_lens(8.25)[0] == pytest.approx(
        true_offset_mm(8.25), abs=0.02
    )
    # Frames at the plan's exposure; shutter closed and the camera's own exposure back.
    primary = _descriptors(documents)["primary"]
    assert primary["configuration"]["camera"]["data"]["camera_cam_acquire_time"] == 0.05
    assert shutter.get() == "close" and focus_camera.cam.acquire_time.get() == 0.1


def test_calibration_keeping_magnification_moves_the_detector(focus_camera, energy, recorded):
    RE, documents = recorded
    shutter = FakeShutter(name="shutter", value="close")
    RE(focus_calibration(focus_camera, energy, shutter, [8.3, 8.4], detector="magnification"))
    found = _streams(documents)["focus"]
    for data in found:
        thin = thin_lens(data["focus_energy_keV"])
        best, det_z = data["focus_zp_z_mm"], data["focus_det_z_mm"]
        expected = focus_offsets_mm(best, det_z, *thin, 50.0, "magnification")
        assert (data["focus_zp_z_offset_mm"], data["focus_det_z_offset_mm"]) == pytest.approx(
            expected
        )
        assert data["focus_det_z_offset_mm"] > 1.0  # ~M times the zone plate's offset
    assert energy.focus_calibration().offsets["det_z"] == pytest.approx(
        [d["focus_det_z_offset_mm"] for d in found]
    )


def test_calibration_fails_when_the_scan_misses_the_focus(focus_camera, energy, recorded):
    RE, documents = recorded
    previous = FocusCalibration([7.0, 9.0], {"zp_z": [0.0, 0.0]}).to_dict()
    energy.calibration.put(previous)
    shutter = FakeShutter(name="shutter", value="close")
    with pytest.raises(FocusNotFoundError, match="edge"):
        RE(focus_calibration(focus_camera, energy, shutter, [8.3, 8.4], zp_z_range_mm=0.04,
                             zp_z_step_mm=0.02))  # fmt: skip
    assert energy.calibration.get() == previous  # unchanged
    assert next(doc for name, doc in documents if name == "stop")["exit_status"] == "fail"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"energies_keV": [8.4, 8.3]}, "strictly increasing"),
        ({"energies_keV": [8.3]}, "strictly increasing"),
        ({"energies_keV": 8.3}, "must be a list"),
        ({"energies_keV": [8.3, 15.5]}, "outside the optics' range"),
        ({"zp_z_range_mm": 0.1}, ">= 2 steps"),
        ({"zp_z_step_mm": -0.1}, "zp_z_step_mm must be > 0"),
        ({"metric": "laplacian"}, "metric must be one of"),
        ({"detector": "tilt"}, "detector must be one of"),
        ({"fit_window": 5}, "fit_window must be <= 4"),
        ({"zp_z_range_mm": 40.0, "zp_z_step_mm": 10.0}, "zp_z scan: energy_zp_z"),
    ],
)
def test_calibration_refuses_before_any_document(focus_camera, energy, recorded, kwargs,
                                                 fragment):  # fmt: skip
    RE, documents = recorded
    shutter = FakeShutter(name="shutter", value="close")
    before = _state(energy, FakeStage(name="sample"), shutter)
    arguments = {"energies_keV": [8.3, 8.4], **kwargs}
    with pytest.raises(PlanArgumentError, match=fragment):
        RE(focus_calibration(focus_camera, energy, shutter, **arguments))
    assert documents == [] and _state(energy, FakeStage(name="sample"), shutter) == before


def test_calibration_survives_a_suspension_mid_scan(focus_camera, energy, recorded):
    RE, documents = recorded
    shutter = FakeShutter(name="shutter", value="close")
    beam_lost = Signal(name="beam_lost", value=0)
    RE.install_suspender(SuspendBoolHigh(beam_lost, sleep=0.05))
    triggers = {"count": 0}
    trigger = focus_camera.trigger

    def trigger_then_lose_the_beam():
        triggers["count"] += 1
        if triggers["count"] == 14:  # mid-way through the second energy's scan
            beam_lost.put(1)
            threading.Timer(0.2, beam_lost.put, args=(0,)).start()
        return trigger()

    focus_camera.trigger = trigger_then_lose_the_beam
    RE(focus_calibration(focus_camera, energy, shutter, [8.3, 8.4]))
    # Each frame is its own checkpoint: on resume the RunEngine replays the interrupted
    # point only, and every point is in the run once (a repeat keeps its seq_num).
    (primary,) = [d["uid"] for n, d in documents if n == "descriptor" and d["name"] == "primary"]
    seq_nums = [d["seq_num"] for n, d in documents if n == "event" and d["descriptor"] == primary]
    assert triggers["count"] >= 19  # the interrupted point was taken again
    assert sorted(set(seq_nums)) == list(range(1, 19))
    found = _streams(documents)["focus"]
    errors = [d["focus_zp_z_offset_mm"] - true_offset_mm(d["focus_energy_keV"]) for d in found]
    assert len(found) == 2 and np.all(np.abs(errors) < 0.02), errors


def test_duration_estimates_count_ramps_and_detector_blocks(rig):
    camera, energy, sample, shutter = rig
    p = energy.zp_z.position
    # 1 mm out and back at 5 mm/s, each move with two 0.1 s ramps
    assert estimate_moves_s(energy.zp_z, [p + 1, p], start=p) == pytest.approx(0.8)
    assert estimate_moves_s(sample.x, [300, 0]) == 0  # no velocity: unknown, not refused
    grid = energy_grid("Ni", energies_keV=ENERGIES, whiteline_eV=(-5, 40))
    start = next(xanes_2d(camera, energy, sample, shutter, grid, exposure_s=0.1, num_flats=2,
                          num_darks=2)).kwargs  # fmt: skip
    frames_s = (2 + 8 * 2 + 8) * (0.1 + 0.015)
    moves_s = estimate_energy_moves_s(energy, ENERGIES)
    assert moves_s > 8 * 2 * 0.1  # every energy move ramps
    expected = frames_s + moves_s + (1 + 8 + 8) * BLOCK_OVERHEAD_S
    assert start["estimated_duration_s"] == pytest.approx(expected, abs=1e-3)
