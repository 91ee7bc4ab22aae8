"""The simulated TXM IOC over real Channel Access: PVs, projections, focus, edge, fly scan."""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pv_docs
import pytest
from conftest import acquire, start_sim_ioc
from scipy import ndimage
from waiting import wait_until

from multiscope import simctl

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs" / "txm.md"
PHOTONS = 20000.0  # --photons given to the IOC: photons/px/s at the flat maximum
SEED = 3
DARK_OFFSET = 100.0  # ADU, the camera bias of sim_devices.physics.DetectorModel
SAMPLE_OUT_UM = 300.0
EXPOSURE = 0.2  # s: ~4000 photons/px, so noise does not hide the sample

# Documented sub-devices checked through their main PVs.
SUBDEVICE_PVS = {
    "cam1:": ["cam1:Acquire", "cam1:AcquireTime", "cam1:BinX", "cam1:BinY_RBV"],
    "HDF1:": ["HDF1:Capture", "HDF1:FilePath", "HDF1:FullFileName_RBV"],
    "shutter:": ["shutter:Cmd", "shutter:Pos-Sts", "shutter:Open-Sts"],
    "ring:current": ["ring:current", "ring:status"],
}
MOTOR_FIELDS = ("", ".RBV", ".DMOV", ".VELO", ".HLM", ".LLM", ".STOP")


def documented_pvs() -> list[str]:
    """PV names (after the prefix) of the table in docs/txm.md, motor fields included."""
    return pv_docs.documented_pvs(
        DOCS, "## PVs of the simulated TXM IOC", expand=SUBDEVICE_PVS,
        by_kind={"motor record": MOTOR_FIELDS},
    )  # fmt: skip


@pytest.fixture(scope="session")
def txm_ioc(ca_port_pool, tmp_path_factory):
    """The TXM IOC for the whole session (own port and prefix)."""
    running, ioc = start_sim_ioc(
        ca_port_pool,
        tmp_path_factory.mktemp("txm-logs"),
        "txm",
        extra_args=["--photons", str(PHOTONS), "--seed", str(SEED)],
    )
    prefix, port = running.prefix, running.port
    yield SimpleNamespace(prefix=prefix, port=port, pid=ioc.pid, log_path=ioc.log_path)
    simctl.stop_ioc(ioc.pid)


@pytest.fixture(scope="module")
def txm(txm_ioc, tmp_path_factory):
    """Connected ophyd devices of the TXM."""
    from ophyd import EpicsMotor, EpicsSignal, EpicsSignalRO

    from multiscope.devices.areadetector import StreamingCamera

    p = txm_ioc.prefix
    devices = SimpleNamespace(
        theta=EpicsMotor(p + "sample:theta", name="theta"),
        x=EpicsMotor(p + "sample:x", name="sample_x"),
        zp_z=EpicsMotor(p + "zp:z", name="zp_z"),
        energy=EpicsMotor(p + "mono:energy", name="energy"),
        shutter=EpicsSignal(p + "shutter:Cmd", name="shutter", string=True, put_complete=True),
        focus=EpicsSignalRO(p + "truth:focus_zp_z", name="focus"),
        axis_offset=EpicsSignalRO(p + "truth:axis_offset_px", name="axis_offset"),
        cam=StreamingCamera(
            p,
            name="txm_cam",
            write_path_template=str(tmp_path_factory.mktemp("txm-data")),
        ),
    )
    for device in vars(devices).values():
        device.wait_for_connection(timeout=10)
    return devices


@pytest.fixture
def nominal(txm):
    """Sample in, at 0 deg, 8 keV, in focus, shutter open (restored after the test too)."""

    def restore():
        txm.theta.velocity.set(180).wait(5)
        txm.shutter.set("Open").wait(5)
        for motor, target in (
            (txm.theta, 0.0),
            (txm.x, 0.0),
            (txm.energy, 8.0),
        ):
            if abs(motor.position - target) > 1e-6:
                motor.set(target).wait(10)
        focus = txm.focus.get(use_monitor=False)
        if abs(txm.zp_z.position - focus) > 1e-5:
            txm.zp_z.set(focus).wait(10)

    restore()
    yield txm
    restore()


def grab(cam, exposure=EXPOSURE, n=1, period=0.0):
    """Acquire ``n`` frames into a new file; return (frames float64, attributes)."""
    return acquire(cam, exposure, n, period)


def sharpness(frame):
    """Variance of the (slightly smoothed) Laplacian of the mean-normalised frame."""
    return float(ndimage.gaussian_laplace(frame / frame.mean(), 1.0).var())


def test_every_documented_pv_exists(txm_ioc):
    from ophyd import EpicsSignalRO

    names = documented_pvs()
    assert len(names) > 100
    signals = {n: EpicsSignalRO(txm_ioc.prefix + n, name=re.sub(r"\W", "_", n)) for n in names}
    missing = []
    for name, signal in signals.items():
        try:
            signal.wait_for_connection(timeout=5)
        except TimeoutError:
            missing.append(name)
    assert not missing, missing
    assert signals["zp:diameter"].get() == pytest.approx(120.0)
    assert signals["zp:dr"].get() == pytest.approx(30.0)
    assert signals["truth:seed"].get() == SEED
    assert signals["truth:tab_width_um"].get() == 80.0  # no --tab-width-um: make_tab's default
    assert signals["optics:pixel_size"].get() == pytest.approx(130.0, rel=1e-6)
    assert signals["optics:magnification"].get() == pytest.approx(50.0, rel=1e-6)
    assert signals["truth:focus_zp_z"].get() == pytest.approx(signals["zp:z.RBV"].get())


def test_sample_out_gives_flats_and_shutter_closed_gives_darks(nominal):
    txm = nominal
    sample_in = grab(txm.cam)[0][0]
    txm.x.set(SAMPLE_OUT_UM).wait(10)
    out_right = grab(txm.cam)[0][0]
    txm.x.set(-SAMPLE_OUT_UM).wait(10)
    out_left = grab(txm.cam)[0][0]
    txm.shutter.set("Close").wait(5)
    dark = grab(txm.cam)[0][0]

    # Darks: the bias plus a little dark current and read noise, no beam.
    assert abs(dark.mean() - DARK_OFFSET) < 3
    assert dark.std() < 6
    # Flats: the full beam (flat-field max 1, mean ~0.85 of it) and no sample contrast.
    level = (out_right.mean() - DARK_OFFSET) / (PHOTONS * EXPOSURE)
    assert 0.7 < level <= 1.0
    ratio = (out_right - dark) / (out_left - dark)
    assert ratio.mean() == pytest.approx(1.0, abs=0.01)
    assert ndimage.gaussian_filter(ratio, 3).std() < 0.005  # Poisson noise only
    transmission = (sample_in - dark) / (out_right - dark)
    assert transmission.mean() < 0.6
    assert ndimage.gaussian_filter(transmission, 3).std() > 0.03  # particles


def test_projections_0_and_180_mirror_about_the_axis_offset(nominal):
    from skimage.registration import phase_cross_correlation

    txm = nominal
    p0 = grab(txm.cam)[0][0]
    txm.theta.set(180).wait(10)
    p180 = grab(txm.cam)[0][0]
    txm.x.set(SAMPLE_OUT_UM).wait(10)
    flat = grab(txm.cam, n=2)[0].mean(axis=0)
    txm.shutter.set("Close").wait(5)
    dark = grab(txm.cam)[0][0]

    def line_integrals(frame):
        return -np.log(np.clip((frame - dark) / (flat - dark), 1e-3, None))

    a, b = line_integrals(p0), line_integrals(p180)[:, ::-1]
    window = np.hanning(a.shape[1])[None, :]
    shift, _, _ = phase_cross_correlation(a * window, b * window, upsample_factor=50)
    truth = txm.axis_offset.get(use_monitor=False)
    assert truth == pytest.approx(3.7, abs=0.01)
    assert abs(shift[0]) < 0.3  # no vertical shift
    assert shift[1] / 2 == pytest.approx(truth, abs=0.25)
    aligned = ndimage.shift(b, (0, shift[1]), order=1)
    core = (slice(None), slice(20, -20))
    assert np.corrcoef(a[core].ravel(), aligned[core].ravel())[0, 1] > 0.9


def test_defocus_blurs_and_refocusing_restores(nominal):
    txm = nominal
    focus = txm.focus.get(use_monitor=False)
    sharp = sharpness(grab(txm.cam)[0][0])
    txm.zp_z.set(focus + 0.3).wait(10)  # ~13 depths of focus (DOF 23 um at 8 keV)
    blurred = sharpness(grab(txm.cam)[0][0])
    txm.zp_z.set(focus).wait(10)
    restored = sharpness(grab(txm.cam)[0][0])
    assert blurred < 0.6 * sharp
    assert restored == pytest.approx(sharp, rel=0.15)


def test_ni_k_edge_lowers_transmission(nominal):
    txm = nominal
    transmission = {}
    for energy in (8.30, 8.36):
        txm.energy.set(energy).wait(10)
        txm.x.set(0).wait(10)
        sample = grab(txm.cam)[0][0]
        txm.x.set(SAMPLE_OUT_UM).wait(10)
        flat = grab(txm.cam)[0][0]
        transmission[energy] = float(np.mean((sample - DARK_OFFSET) / (flat - DARK_OFFSET)))
    assert transmission[8.36] < 0.6 * transmission[8.30]


def test_fly_scan_records_theta_at_mid_exposure(nominal):
    txm = nominal
    velocity = 30.0
    txm.theta.velocity.set(velocity).wait(5)
    cam = txm.cam
    # Binned 4 (256 x 256): the IOC renders a quarter of the pixels of the default 512 x
    # 512, so it keeps the 20 frames/s this test needs with the CPU shared by parallel
    # test workers (at 512 x 512 the 40 frames outlasted the trigger's limit).
    binning = int(cam.cam.bin_x.get())
    cam.cam.bin_x.set(4).wait(10)  # completes at BinX_RBV = 4 (SignalWithRBV)
    # The camera is set up and staged before the rotation starts (on a loaded machine
    # its puts took seconds: the 3.3 s rotation was over before the first frame).
    cam.cam.acquire_time.set(0.02).wait(5)
    cam.cam.acquire_period.set(0.05).wait(5)
    cam.images_per_trigger.put(40)
    try:
        cam.stage()
    except BaseException:
        cam.cam.bin_x.set(binning).wait(10)
        raise
    try:
        move = txm.theta.set(100.0)
        # At constant speed: the acceleration ramp (0.05 s) ends at 0.75 deg.
        wait_until(lambda: txm.theta.position > 5.0, timeout=10, message="theta not past 5 deg")
        t0 = time.monotonic()
        cam.trigger().wait(cam.trigger_timeout() + 5)
        elapsed = time.monotonic() - t0
        docs = list(cam.collect_asset_docs())
    finally:
        cam.unstage()
        cam.cam.bin_x.set(binning).wait(10)
    move.wait(10)
    path = docs[0][1]["uri"].removeprefix("file://localhost")
    with h5py.File(path, "r") as f:
        frames = f["/entry/data/data"][:]
        attrs = {k: v[:] for k, v in f["/entry/instrument/NDAttributes"].items()}
    theta, stamps = attrs["theta"], attrs["NDArrayTimeStamp"]
    assert frames.shape == (40, 256, 256)
    assert np.all(np.diff(theta) > 0)
    assert 5.0 < theta[0] < theta[-1] < 100.0
    slope, intercept = np.polyfit(stamps - stamps[0], theta, 1)
    assert slope == pytest.approx(velocity, rel=0.02)
    residual = theta - (slope * (stamps - stamps[0]) + intercept)
    assert np.abs(residual).max() < 0.05
    interval = float(np.median(np.diff(stamps)))
    print(f"fly scan: median frame interval {interval * 1e3:.1f} ms, 40 frames in {elapsed:.2f} s")
    assert interval < 0.075
