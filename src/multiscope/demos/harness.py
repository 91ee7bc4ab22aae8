"""Demo of the harness instrument: a motor, a camera, a ring current and a shutter.

Starts the simulated demo IOC (or reuses a running one), configures a session,
scans ``m1`` through the beam spot with the camera, reads the run back from the
catalog (frames from the IOC's HDF5 files), locates the peak and scores it
against the simulator's ground truth.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import simctl
from ..plans.scans import line_scan
from ..session import configure_session
from . import DemoResult

__all__ = ["run", "peak_position"]

# Tolerance of the peak position: the scan's step is 0.25 mm, the spot's
# brightness is a Gaussian of sigma 0.5 mm sampled with Poisson noise; the
# centroid of the background-subtracted brightness lands well inside 0.05 mm.
PEAK_TOLERANCE_MM = 0.05


def peak_position(positions: np.ndarray, frames: np.ndarray) -> float:
    """Position of the brightest point of a scan: centroid of background-subtracted totals.

    Parameters
    ----------
    positions : (n,) array
        Motor positions.
    frames : (n, ...) array
        One or more frames per position.
    """
    totals = frames.reshape(len(positions), -1).sum(axis=1).astype(float)
    signal = np.clip(totals - np.median(np.sort(totals)[: max(3, len(totals) // 5)]), 0, None)
    if signal.sum() <= 0:
        raise ValueError("no peak: every frame has the background level")
    return float((signal * positions).sum() / signal.sum())


def _read_truth(prefix: str) -> float:
    from ophyd import EpicsSignalRO

    truth = EpicsSignalRO(f"{prefix}truth:peak_position", name="truth_peak_position")
    truth.wait_for_connection(timeout=10)
    return float(truth.get())


def run(data_dir: Path) -> DemoResult:
    """Run the demo end to end and return its scores."""
    before = {n for n, r in simctl.status(data_dir).items() if r["alive"]}
    simctl.start(["demo"], data_dir)
    started_here = "demo" not in before
    session = None
    try:
        session = configure_session({}, "demo", data_dir=data_dir, table=False)
        m1 = session.devices["m1"]
        cam = session.devices["cam"]
        shutter = session.devices["shutter"]
        beam = session.devices["beam_current"]
        for device in (m1, cam, shutter, beam):
            device.wait_for_connection(timeout=10)
        cam.cam.acquire_time.set(0.01).wait(5)
        shutter.set("open").wait(5)
        t0 = time.monotonic()
        (uid,) = session.RE(
            line_scan([cam, beam], m1, -2, 2, 17, md={"purpose": "multiscope demo"})
        )
        scan_s = time.monotonic() - t0
        shutter.set("close").wait(5)
        session.catalog.drain(60)
        run_client = session.catalog.run(uid)
        data = run_client["primary"].read()
        frames = np.asarray(data[cam.image_key])
        positions = np.asarray(data["m1"])
        measured = peak_position(positions, frames)
        truth = _read_truth(session.prefix)
        error = abs(measured - truth)
        exit_status = run_client.metadata["stop"]["exit_status"]
        passed = exit_status == "success" and error <= PEAK_TOLERANCE_MM
        return DemoResult(
            name="demo",
            passed=passed,
            elapsed_s=0.0,
            scores={
                "peak position (m1, mm)": f"{measured:.3f} (truth {truth:.3f}, "
                f"error {error:.3f}, tolerance {PEAK_TOLERANCE_MM})",
                "frames read back from catalog": f"{frames.shape[0]} x {frames.shape[-2:]}",
                "scan": f"{len(positions)} points in {scan_s:.1f} s, exit {exit_status}",
            },
            details=[f"run {uid}", f"frames in {data_dir / 'assets'}"],
        )
    finally:
        if session is not None:
            session.close()
        if started_here:
            simctl.stop(["demo"], data_dir)
