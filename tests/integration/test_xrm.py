"""The lab XRM over Channel Access: geometry, recipes, reconstruction, refusals, safe exits,
scout and zoom, against the simulated IOC's ground truth.

The IOC runs the coin cell with the internal short circuit; scans use binning 8 (256 x 256
frames: the recipes' geometry with 4x their pixel) and 61-121 projections to stay quick.
"""

import math
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import acquire, finished_run, xrm_session
from ophyd import EpicsSignal, EpicsSignalRO
from waiting import wait_until

from multiscope.analysis.optics import xrm_pixel_size_um
from multiscope.analysis.xrm_scout import sample_mm_to_voxel
from multiscope.plans.preflight import PlanArgumentError

pytestmark = pytest.mark.integration

FAST = {"binning": 8, "num_darks": 3, "num_flats": 3}


IOC_ARGS = ["--phantom", "coin_short", "--time-scale", "0.002", "--seed", "0"]


@pytest.fixture(scope="module")
def xrm(ca_port_pool, tmp_path_factory):
    with xrm_session(ca_port_pool, tmp_path_factory, "xrm", IOC_ARGS) as (session, running):
        session.devices["sample"].theta.velocity.set(360).wait(5)
        yield session, running


def _pv(running, suffix, cls=EpicsSignalRO, **kwargs):
    signal = cls(running.prefix + suffix, name=suffix.replace(":", "_"), **kwargs)
    signal.wait_for_connection(timeout=10)
    return signal


def test_pixel_size_of_the_pseudo_positioner_is_the_geometry_formula(xrm):
    session, running = xrm
    geometry = session.devices["geometry"]
    geometry.wait_for_connection(timeout=10)
    for sod, odd in ((67.91, 100.0), (30.0, 250.0)):
        geometry.sod.set(sod).wait(30)
        geometry.odd.set(odd).wait(30)
        binning = int(session.devices["camera"].cam.bin_x.get())
        expected = xrm_pixel_size_um(13.5, sod, odd, 0.4, binning)
        wait_until(lambda e=expected: abs(geometry.pixel_size.position - e) < 1e-6, timeout=10)
        assert geometry.pixel_size_rbv.get() == pytest.approx(expected, rel=1e-6)
    # and the pseudo axis moves the SOD for a pixel at the current ODD
    geometry.pixel_size.set(20.0).wait(30)
    assert geometry.odd.position == pytest.approx(250.0, abs=1e-3)
    assert xrm_pixel_size_um(13.5, geometry.sod.position, 250.0, 0.4, binning) == pytest.approx(
        20.0, rel=1e-4
    )


def _volume(session, uid):
    """The reconstruction (attenuation per voxel) the session's pipeline stored for run ``uid``."""
    import h5py

    assert session.drain(600)
    assert not session.pipeline.errors
    derived = [r for r in session.catalog.runs(limit=100) if r.plan_name == "tomo_reconstruction"]
    starts = [session.catalog.run(r.uid).metadata["start"] for r in derived]
    (start,) = [s for s in starts if s["derived_from"] == uid]
    with h5py.File(start["files"]["volume"], "r") as f:
        return f["/entry/data/data"][0]


def test_a_small_coin_survey_reconstructs_the_cell_against_the_truth(xrm):
    from sim_devices.physics.xrm_scene import mu_per_mm

    session, running = xrm
    d = session.devices
    (uid,) = session.RE(session.plans["xrm_tomo_scan"](
        d["xrm"], "coin_survey", n_projections=121, voi_mm=(0.0, 0.0, 0.0),
        sample_id="CR2032 short", **FAST))  # fmt: skip
    run = finished_run(session, uid)
    start = run.metadata["start"]
    assert start["sample_id"] == "CR2032 short" and start["tomo"]["sample_id"] == "CR2032 short"
    pixel_um = start["tomo"]["pixel_size_um"]
    assert pixel_um == pytest.approx(4 * 27.3, rel=1e-3)  # the recipe's geometry at binning 8
    assert d["geometry"].pixel_size_rbv.get() == pytest.approx(pixel_um, rel=1e-4)
    volume = _volume(session, uid)
    pixel_mm = pixel_um * 1e-3
    mu_steel = mu_per_mm("steel", _pv(running, "source:energy_RBV").get())
    nz, ny, nx = volume.shape
    # the spring's slices (z 0 to 1 mm: air, the spring and the casing wall), averaged
    rows = [i for i in range(nz) if 0.0 <= ((nz - 1) / 2 - i) * pixel_mm <= 1.0]
    image = volume[rows].mean(axis=0) / pixel_mm  # 1/mm
    yy, xx = np.mgrid[0:ny, 0:nx]
    radius = np.hypot(yy - ny // 2, xx - nx // 2) * pixel_mm
    ring = np.rint(radius / pixel_mm).astype(int)
    profile = np.bincount(ring.ravel(), image.ravel()) / np.bincount(ring.ravel())
    r = np.arange(profile.size) * pixel_mm
    print("steel mu", mu_steel, "profile", np.round(profile[:100], 3).tolist())
    for name, (low, high), r_true, area_true in (
        ("casing wall", (9.2, 10.6), 9.875, mu_steel * 0.25),
        ("spring", (5.5, 6.9), 6.15, 0.5 * mu_steel * 0.3),
    ):
        band = (r >= low) & (r <= high)
        peak = r[band][np.argmax(profile[band])]
        area = profile[band].sum() * pixel_mm  # integral of mu across the shell
        print(name, "peak", peak, "area", area, "truth", area_true)
        assert peak == pytest.approx(r_true, abs=1.5 * pixel_mm), name
        assert area == pytest.approx(area_true, rel=0.1), name
    air = profile[r < 5.0]
    assert abs(air.mean()) < 0.05 * mu_steel


def _positions(d) -> dict[str, float]:
    axes = {"sod": d["geometry"].sod, "odd": d["geometry"].odd, "x": d["sample"].x,
            "y": d["sample"].y, "z": d["sample"].z, "theta": d["sample"].theta}  # fmt: skip
    return {name: axis.user_readback.get(use_monitor=False) for name, axis in axes.items()}


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [({"sod_mm": 5.0}, "below the instrument's minimum SOD"),
     ({"objective": "10x"}, "not in the turret")],
)  # fmt: skip
def test_refusals_before_any_motion_and_without_x_rays(xrm, overrides, reason):
    session, running = xrm
    d = session.devices
    shutter_open = _pv(running, "source:shutter:Open-Sts")
    opened = []
    token = shutter_open.subscribe(lambda value, **kw: opened.append(value) if value else None)
    before = _positions(d)
    objective = d["turret"].objective.get(use_monitor=False)
    try:
        with pytest.raises(PlanArgumentError, match=reason):
            session.RE(session.plans["xrm_tomo_scan"](d["xrm"], "coin_survey", **overrides, **FAST))
    finally:
        shutter_open.unsubscribe(token)
    assert _positions(d) == before  # nothing moved
    assert d["turret"].objective.get(use_monitor=False) == objective
    assert shutter_open.get(use_monitor=False) == 0 and not opened  # no X-rays


def test_the_instrument_itself_refuses_an_sod_below_its_minimum_and_a_foreign_objective(xrm):
    from multiscope.devices.xrm import XRMRefusedError

    session, running = xrm
    d = session.devices
    sod = d["geometry"].sod.user_readback.get(use_monitor=False)
    # a client that skips its own limit check: the IOC refuses and says why
    raw = _pv(running, "geometry:sod", EpicsSignal)
    raw.put(5.0, force=True, wait=True, timeout=10)
    message = _pv(running, "interlock:message_RBV", string=True)
    wait_until(lambda: "minimum" in message.get(use_monitor=False), timeout=10)
    assert d["geometry"].sod.user_readback.get(use_monitor=False) == sod
    # nor does lowering the axis's soft limit first let it past the source window
    low_limit = _pv(running, "geometry:sod.LLM", EpicsSignal)
    original = low_limit.get()
    low_limit.put(0.0, wait=True)
    try:
        raw.put(5.0, force=True, wait=True, timeout=10)
        wait_until(lambda: "source window" in message.get(use_monitor=False), timeout=10)
        assert d["geometry"].sod.user_readback.get(use_monitor=False) == sod
    finally:
        low_limit.put(original, wait=True)
    with pytest.raises(XRMRefusedError, match="not in the turret"):
        d["turret"].set("10x")
    # a tube voltage beyond the tube's: refused at once with the reason, not waited for
    from multiscope.devices.process import InstrumentRefusedError

    kv = d["source"].kv.get()
    with pytest.raises(InstrumentRefusedError, match="refused by the instrument"):
        d["source"].kv.set(500.0).wait(15)
    assert d["source"].kv.get(use_monitor=False) == kv
    d["source"].kv.set(kv).wait(15)  # accepted again: the reason is cleared
    assert message.get(use_monitor=False) == ""


class _Documents:
    """The documents the RunEngine emits (a subscriber)."""

    def __init__(self):
        self.seen: list[tuple[str, dict]] = []

    def __call__(self, name, doc):
        self.seen.append((name, doc))


def _assert_safe(running):
    assert _pv(running, "source:shutter:Open-Sts").get(use_monitor=False) == 0
    assert _pv(running, "cam1:Acquire").get(use_monitor=False) == 0
    assert _pv(running, "sample:theta.DMOV").get(use_monitor=False) == 1


@pytest.mark.parametrize("action", ["fault", "abort", "stop"])
def test_every_exit_leaves_the_source_shutter_closed(xrm, action):
    """Mid-scan, shutter open: a refused rotation (fault), an abort or a stop."""
    from bluesky.utils import RunEngineInterrupted

    session, running = xrm
    d, RE = session.devices, session.RE
    documents = _Documents()
    token = RE.subscribe(documents)
    shutter_open = _pv(running, "source:shutter:Open-Sts")
    acquiring = _pv(running, "cam1:Acquire")
    theta = _pv(running, "sample:theta.RBV")
    high_limit = _pv(running, "sample:theta.HLM", EpicsSignal)
    original_limit = high_limit.get()
    landed = threading.Event()

    def land():
        # wait until projections are under way with the shutter open
        def exposing():
            return (theta.get(use_monitor=False) > 20 and acquiring.get(use_monitor=False) == 1
                    and shutter_open.get(use_monitor=False) == 1)  # fmt: skip

        wait_until(exposing, timeout=120)
        if action == "fault":
            # Later moves refused: by the plan's axis (a LimitError naming it) once its
            # monitored copy of the limits has the new one, milliseconds after the put;
            # five steps (3 deg each) ahead, so that copy is current before they come.
            high_limit.put(theta.get(use_monitor=False) + 15, wait=True)
        else:
            RE.request_pause(defer=False)
        landed.set()

    watcher = threading.Thread(target=land, daemon=True)
    watcher.start()
    plan = session.plans["xrm_tomo_scan"](d["xrm"], "coin_survey", n_projections=61,
                                          voi_mm=(0.0, 0.0, 0.0), **FAST)  # fmt: skip
    try:
        if action == "fault":
            with pytest.raises(Exception, match="limit"):
                RE(plan)
        else:
            with pytest.raises(RunEngineInterrupted):
                RE(plan)
            assert RE.state == "paused"
            assert shutter_open.get(use_monitor=False) == 1, "paused with the shutter closed"
            getattr(RE, action)()
    finally:
        watcher.join(130)
        high_limit.put(original_limit, wait=True)
        RE.unsubscribe(token)
    assert landed.is_set()
    assert RE.state == "idle"
    _assert_safe(running)
    stop = [doc for name, doc in documents.seen if name == "stop"][-1]
    assert stop["exit_status"] == {"fault": "fail", "abort": "abort", "stop": "success"}[action]


#: Where an earlier zoom (not into the short) left the sample stage: its VOI (mm).
ZOOMED_MM = (-2.0, 1.5, 0.5)


def _leave_used(session):
    """Leave the IOC as earlier scans and tests do: every setting a survey sets changed,
    the sample off centre (where a zoom left it), frames taken (the camera's noise
    realisation is no longer a fresh IOC's)."""
    d = session.devices
    d["geometry"].odd.set(250.0).wait(30)
    d["geometry"].pixel_size.set(20.0).wait(30)  # moves the SOD
    for axis, value in (*zip("xyz", ZOOMED_MM, strict=True), ("theta", 37.0)):
        getattr(d["sample"], axis).set(value).wait(30)
    d["turret"].set("4x").wait(30)
    d["camera"].cam.bin_x.set(2).wait(30)
    for signal, value in ((d["source"].kv, 60.0), (d["source"].power, 6.5),
                          (d["source"].filter, "LE2")):  # fmt: skip
        signal.set(value).wait(30)
    acquire(d["camera"], 0.3, n=3, period=0.5)


def test_scout_and_zoom_finds_the_short_circuit_and_images_it(xrm):
    """The survey's symmetry anomaly is the IOC's defect (within 0.3 mm, ~3 survey voxels);
    the zoom, centred there, shows the defect's contact zone against the anode around it.

    On the module's IOC, used: after the other tests' scans and with its settings
    changed and the sample where a zoom left it, so the noise realisation is not a fresh
    IOC's and the survey must centre the sample itself. (The scout's error depended on
    the noise realisation, 0.05-0.5 mm, until it located the anomaly on the residual
    rather than on the per-ring score; a survey off centre scouted the rotation axis,
    docs/xrm.md.)"""
    from sim_devices.physics.xrm_scene import mu_per_mm

    session, running = xrm
    d = session.devices
    truth = tuple(_pv(running, "truth:defect_mm").get(use_monitor=False))
    assert all(math.isfinite(v) for v in truth)
    _leave_used(session)
    fast = {"n_projections": 121, **FAST}
    survey_uid, zoom_uid = session.RE(session.plans["scout_and_zoom"](
        d["xrm"], "coin_survey", "coin_zoom", "auto", sample_id="CR2032 short",
        survey_overrides=fast, zoom_overrides=fast))  # fmt: skip
    survey, zoom = finished_run(session, survey_uid), finished_run(session, zoom_uid)
    assert survey.metadata["start"]["xrm"]["voi_mm"] == [0.0, 0.0, 0.0]  # not ZOOMED_MM
    scout = zoom.metadata["start"]["scout"]
    assert scout["survey_uid"] == survey_uid and scout["selection"] == "auto"
    assert zoom.metadata["start"]["xrm"]["voi_mm"] == scout["voi_mm"]
    assert survey.metadata["start"]["sample_id"] == zoom.metadata["start"]["sample_id"]
    error_mm = np.subtract(scout["voi_mm"], truth)
    print("scout:", scout, "truth", truth)
    assert np.linalg.norm(error_mm) < 0.3
    # the zoom: interior tomography (the 20 mm cell is wider than the field)
    start = zoom.metadata["start"]
    pixel_mm = start["tomo"]["pixel_size_um"] * 1e-3
    volume = _volume(session, zoom_uid) / pixel_mm  # 1/mm
    assert volume.shape[-1] * pixel_mm < 20.0
    iz, iy, ix = sample_mm_to_voxel((truth[0], truth[1], -1.2), volume.shape,
                                    start["tomo"]["pixel_size_um"], scout["voi_mm"])  # fmt: skip
    image = volume[int(round(iz))]  # the anode's middle, through the contact zone
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    distance = np.hypot(yy - iy, xx - ix) * pixel_mm
    contact = image[distance < 0.5].mean()
    around = image[(distance > 1.0) & (distance < 1.5)].mean()
    energy = _pv(running, "source:energy_RBV").get()
    expected = mu_per_mm("nmc", energy) - mu_per_mm("graphite", energy)
    print("zoom: contact", contact, "around", around, "expected difference", expected)
    assert contact - around == pytest.approx(expected, rel=0.35)


def test_every_documented_pv_is_served(xrm):
    import pv_docs

    _, running = xrm
    docs = Path(__file__).resolve().parents[2] / "docs" / "xrm.md"
    names = pv_docs.documented_pvs(
        docs, "## PVs of the simulated XRM IOC", end="\n## ",
        by_kind={"motor record": ("", ".RBV", ".DMOV", ".VELO", ".HLM", ".LLM", ".STOP")},
        expand={"cam1:": ("cam1:Acquire", "cam1:AcquireTime"),
                "HDF1:": ("HDF1:Capture", "HDF1:FullFileName_RBV")},
    )  # fmt: skip
    assert len(names) > 40
    missing = []
    for name in names:
        try:
            _pv(running, name)
        except Exception:  # noqa: BLE001 - any failure to connect is a missing PV
            missing.append(name)
    assert not missing
