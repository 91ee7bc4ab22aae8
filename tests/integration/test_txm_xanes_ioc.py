"""2D XANES against the simulated TXM IOC over real Channel Access.

Energies across the Ni K-edge are set through the IOC's ``mono:energy`` (with the
energy pseudo-axis, which keeps zone plate and detector in focus at M = 50), frames
come from the camera's HDF5 files: the transmission through the NMC811 tab must dip
at the edge, the whiteline must show and match the ground truth of
``sim_devices.xanes_truth``, and every frame must carry the energy drift the IOC
applied (``drift_x_px`` / ``drift_y_px``, equal to ``truth:drift_x_px`` /
``truth:drift_y_px`` at that energy), which must be the shift that aligns it.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from conftest import acquire, start_sim_ioc

from multiscope import simctl
from multiscope.analysis.xanes import align_stack, fit_whiteline, normalize, shift_stack

pytestmark = pytest.mark.integration

SEED = 3
SHAPE = (128, 128)
PHOTONS = 200000.0  # photons/px/s: a 0.25 s flat is 5e4 counts (the default 20000 needs 2.5 s)
EXPOSURE = 0.25
DARK_OFFSET = 100.0
SAMPLE_OUT_UM = 300.0
# 5-10 eV steps before and after the edge, 1.5 eV across the whiteline (8350-8353 eV).
ENERGIES = [
    8.300, 8.310, 8.320, 8.334, 8.340, 8.344, 8.347, 8.3485, 8.350, 8.3515, 8.353,
    8.3545, 8.356, 8.359, 8.364, 8.370, 8.385, 8.400,
]  # fmt: skip
PRE_EDGE, POST_EDGE, WINDOW = (8.30, 8.32), (8.37, 8.40), (8.344, 8.359)


@pytest.fixture(scope="module")
def txm_ioc(ca_port_pool, tmp_path_factory):
    """A TXM IOC at binning 4, 128 x 128 frames (default chemistry and energy drift)."""
    running, ioc = start_sim_ioc(
        ca_port_pool,
        tmp_path_factory.mktemp("xanes-logs"),
        "txm",
        extra_args=[
            "--binning", "4", "--shape", *map(str, SHAPE), "--seed", str(SEED),
            "--photons", str(PHOTONS),
        ],
    )  # fmt: skip
    yield running
    simctl.stop_ioc(ioc.pid)


@pytest.fixture(scope="module")
def txm(txm_ioc, tmp_path_factory):
    from ophyd import EpicsMotor, EpicsSignal, EpicsSignalRO

    from multiscope.devices.areadetector import StreamingCamera
    from multiscope.instruments import txm as factories

    p = txm_ioc.prefix
    devices = SimpleNamespace(
        energy=factories.energy(p),
        x=EpicsMotor(p + "sample:x", name="sample_x"),
        shutter=EpicsSignal(p + "shutter:Cmd", name="shutter", string=True, put_complete=True),
        drift_x=EpicsSignalRO(p + "truth:drift_x_px", name="drift_x"),
        drift_y=EpicsSignalRO(p + "truth:drift_y_px", name="drift_y"),
        valence_seed=EpicsSignalRO(p + "truth:valence_seed", name="valence_seed"),
        valence_pattern=EpicsSignalRO(
            p + "truth:valence_pattern", name="valence_pattern", string=True
        ),
        cam=StreamingCamera(
            p, name="xanes_cam", write_path_template=str(tmp_path_factory.mktemp("xanes-data"))
        ),
    )
    for device in vars(devices).values():
        device.wait_for_connection(timeout=10)
    devices.energy.calibration.put({})  # thin lens only
    return devices


def grab(cam, n=1):
    """Acquire ``n`` frames into a new file; return (frames float64, attributes)."""
    return acquire(cam, EXPOSURE, n)


@pytest.fixture(scope="module")
def scan(txm):
    """One 2D XANES scan: a frame per energy, then flats (sample out) and darks."""
    energy = txm.energy

    def move(e):
        energy.set(e).wait(energy.move_timeout(e) + 5)

    txm.shutter.set("Open").wait(5)
    txm.x.set(0.0).wait(10)
    frames, attrs, pvs = [], [], []
    try:
        for e in ENERGIES:
            move(e)
            pvs.append((txm.drift_x.get(use_monitor=False), txm.drift_y.get(use_monitor=False)))
            frame, attr = grab(txm.cam)
            frames.append(frame[0])
            attrs.append({k: float(v[0]) for k, v in attr.items()})
        txm.x.set(SAMPLE_OUT_UM).wait(10)
        flat = grab(txm.cam, n=4)[0].mean(axis=0)
        txm.shutter.set("Close").wait(5)
        dark = grab(txm.cam, n=2)[0].mean(axis=0)
    finally:
        txm.shutter.set("Open").wait(5)
        txm.x.set(0.0).wait(10)
        move(8.0)
    transmission = (np.stack(frames) - dark) / (flat - dark)
    return SimpleNamespace(
        energies=np.array(ENERGIES),
        transmission=transmission,
        attrs=attrs,
        pvs=np.array(pvs),
        flat=flat,
        dark=dark,
    )


@pytest.fixture(scope="module")
def truth():
    from sim_devices.xanes_truth import build_truth

    return build_truth(SEED, 4, SHAPE)  # the IOC's arguments, theta = x = z = 0


def test_frames_record_the_energy_drift_shown_by_the_truth_pvs(scan, txm):
    drift = np.array([(a["drift_x_px"], a["drift_y_px"]) for a in scan.attrs])
    np.testing.assert_allclose(drift, scan.pvs, atol=1e-6)
    np.testing.assert_allclose([a["energy"] for a in scan.attrs], ENERGIES, atol=1e-9)
    assert np.all(np.hypot(*drift.T) <= 3.0 + 1e-9)  # --energy-drift-max-px default
    assert np.count_nonzero(np.hypot(*drift.T) > 0.05) >= 0.8 * len(ENERGIES)
    assert np.unique(np.round(drift, 6), axis=0).shape[0] == len(ENERGIES)
    assert txm.valence_seed.get() == SEED and txm.valence_pattern.get() == "mixed"
    # Outside the XANES window there is no energy drift.
    assert txm.drift_x.get(use_monitor=False) == txm.drift_y.get(use_monitor=False) == 0.0


def test_transmission_through_nmc_dips_at_the_edge(scan):
    mean = scan.transmission[:, 16:-16, 16:-16].mean(axis=(1, 2))
    below = mean[scan.energies < 8.33].mean()
    pairs = zip(ENERGIES, mean, strict=True)
    print("transmission: " + ", ".join(f"{e:.4f} {t:.3f}" for e, t in pairs))
    assert 0.1 < below < 0.6
    assert mean[scan.energies >= 8.37].max() < 0.5 * below  # Ni K-edge jump
    peak = scan.energies[np.argmin(mean)]
    assert 8.3485 <= peak <= 8.3545  # least light at the whiteline


def test_recorded_drift_aligns_the_frames(scan):
    drift = np.array([(a["drift_y_px"], a["drift_x_px"]) for a in scan.attrs])  # (rows, cols)
    absorbance = -np.log(np.clip(scan.transmission, 1e-4, None))
    below = np.flatnonzero(scan.energies < 8.33)
    shifts, _ = align_stack(absorbance[below], reference_index=0)
    # align_stack applies minus the drift relative to the reference.
    error = shifts + (drift[below] - drift[below[0]])
    print(f"alignment error (px): max {np.abs(error).max():.3f}")
    assert np.abs(error).max() < 0.1


def test_whiteline_map_matches_the_truth(scan, truth):
    drift = np.array([(a["drift_y_px"], a["drift_x_px"]) for a in scan.attrs])
    absorbance = -np.log(np.clip(scan.transmission, 1e-4, None))
    aligned = shift_stack(absorbance, -drift)  # into the drift-free frame of the truth
    norm, jump, mask = normalize(aligned, scan.energies, PRE_EDGE, POST_EDGE, min_edge_jump=0.3)
    core = (slice(8, -8), slice(8, -8))  # never shifted in from outside the field
    ok = ~mask[core] & ~truth.mask[core]
    assert ok.mean() > 0.95  # the default tab puts NMC on nearly every ray
    mean_spectrum = np.nanmean(norm[(slice(None), *core)][:, ok], axis=1)
    top = int(np.argmax(mean_spectrum))
    print("normalised mean spectrum: " + ", ".join(f"{v:.2f}" for v in mean_spectrum))
    assert mean_spectrum[top] > 1.25  # the whiteline, ~+50 % above the edge step
    assert 8.3485 <= scan.energies[top] <= 8.3545
    wl = fit_whiteline(norm, scan.energies, WINDOW, mask=mask, n_points=5) * 1e3
    err = (wl - truth.whiteline_eV)[core][ok]
    corr = np.corrcoef(wl[core][ok], truth.whiteline_eV[core][ok])[0, 1]
    print(
        f"whiteline - truth: median {np.median(err):+.3f} eV, "
        f"rms {np.sqrt(np.mean(err**2)):.3f} eV, correlation {corr:.3f}"
    )
    assert abs(np.median(err)) < 0.15 and np.sqrt(np.mean(err**2)) < 0.25
    assert corr > 0.9
