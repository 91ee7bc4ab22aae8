"""ophyd's stock area-detector classes, unchanged, against every simulated camera over CA.

A facility's profile drives a camera with ophyd's own ``SingleTrigger`` +
``DetectorBase`` + ``AreaDetectorCam`` + ``HDF5Plugin`` (with the
``FileStoreHDF5IterativeWrite`` mixin) + ``StatsPlugin`` / ``ImagePlugin`` /
``ROIPlugin``. Staging validates the asyn port chain from ``PortName_RBV`` and
``NDArrayPort`` (ADCore string records: a CHAR waveform failed with "unhashable type:
numpy.ndarray") and reads ``PluginType_RBV``; a bluesky ``count`` then triggers,
reads the statistics and writes the frames. Each camera is checked against what it
wrote: the statistics of every event against its frame in the HDF5 file, a second
statistics plugin chained behind ``ROI1:`` against numpy on the ROI, and ``image1:``
against the last frame. The detector is connected as a profile may connect it, every
signal at once (``wait_for_connection(all_signals=True)``, no lazy signal waited on
alone within ophyd's 1 s default, which timed out under load): every PV the stock
classes name is served on every camera.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pv_docs
import pytest
import stock_pvs
from conftest import RunningIOC

from multiscope import simctl

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs" / "areadetector.md"
# A row of this type in the docs' table stands for a setpoint and its readback.
PAIR = {"setpoint + `_RBV`": ("", "_RBV")}
FRAMES = 3
# (instrument, detector prefix after the IOC's, IOC options, exposure s)
CAMERAS = {
    "demo": ("demo", "", [], 0.01),
    "txm": ("txm", "", ["--seed", "1", "--particles", "3"], 0.01),
    "xrm": ("xrm", "", ["--time-scale", "0.002", "--binning", "4"], 0.5),
    "fibsem-SEM": ("fibsem", "SEM:", ["--time-scale", "0.002"], 1.0),
    "fibsem-EDS": ("fibsem", "EDS:", ["--time-scale", "0.002"], 1.0),
    "fibsem-SIMS": ("fibsem", "SIMS:", ["--time-scale", "0.002"], 1.0),
}
# Each PFIB-SEM detector acquires only where its beam reaches the face (the IOC's guard).
FIBSEM_SETUP = {
    "SEM:": [("stage:tilt", 54.0)],
    "EDS:": [("stage:tilt", 54.0), ("eds:insert", "Inserted")],
    "SIMS:": [("eds:insert", "Retracted"), ("stage:tilt", 0.0), ("stage:rot", 180.0),
              ("ion:beam", "On")],
}  # fmt: skip


def _stock_detector_class():
    """The recipe of a facility profile, from ophyd's classes only."""
    from ophyd import Component as Cpt
    from ophyd.areadetector.cam import AreaDetectorCam
    from ophyd.areadetector.detectors import DetectorBase
    from ophyd.areadetector.filestore_mixins import FileStoreHDF5IterativeWrite
    from ophyd.areadetector.plugins import HDF5Plugin, ImagePlugin, ROIPlugin, StatsPlugin
    from ophyd.areadetector.trigger_mixins import SingleTrigger

    class HDF5PluginWithFileStore(HDF5Plugin, FileStoreHDF5IterativeWrite):
        pass

    class StockDetector(SingleTrigger, DetectorBase):
        cam = Cpt(AreaDetectorCam, "cam1:")
        hdf5 = Cpt(HDF5PluginWithFileStore, "HDF1:", write_path_template="/")
        image1 = Cpt(ImagePlugin, "image1:")
        roi1 = Cpt(ROIPlugin, "ROI1:")
        stats1 = Cpt(StatsPlugin, "Stats1:")
        stats2 = Cpt(StatsPlugin, "Stats2:")

    return StockDetector


@pytest.fixture(scope="module")
def iocs(ca_port_pool, tmp_path_factory):
    """One IOC per instrument for the module, all started together on first use.

    Their start-ups (seconds each: phantoms, numba kernels) overlap instead of adding.
    """
    started: dict[str, tuple[RunningIOC, simctl.IOCProcess]] = {}

    def start_all() -> None:
        logs = tmp_path_factory.mktemp("ioc-logs")
        for instrument, args in {spec[0]: spec[2] for spec in CAMERAS.values()}.items():
            port, prefix = next(ca_port_pool), f"T{uuid.uuid4().hex[:6]}:"
            process = simctl.start_ioc(
                instrument, prefix=prefix, port=port, log_dir=logs, extra_args=args
            )
            started[instrument] = (RunningIOC(prefix, port, process.pid, process.log_path),
                                   process)  # fmt: skip
        for _, process in started.values():
            simctl.wait_until_ready(process, timeout=120)

    def get(instrument: str) -> RunningIOC:
        if not started:
            start_all()
        return started[instrument][0]

    try:
        yield get
    finally:
        with ThreadPoolExecutor() as pool:  # each stop may wait out a grace period
            list(pool.map(simctl.stop_ioc, [process.pid for _, process in started.values()]))


def _put(prefix: str, name: str, value) -> None:
    from ophyd import EpicsSignal

    signal = EpicsSignal(prefix + name, name=name.replace(":", "_"), string=isinstance(value, str))
    signal.wait_for_connection(timeout=10)
    signal.set(value).wait(60)


def _move(prefix: str, axis: str, target: float) -> None:
    from ophyd import EpicsMotor

    motor = EpicsMotor(prefix + axis, name=axis.replace(":", "_"))
    motor.wait_for_connection(timeout=10)
    motor.set(target).wait(60)


@pytest.fixture(params=list(CAMERAS))
def camera(request, iocs):
    """A stock detector of one simulated camera, its instrument set up to expose."""
    instrument, detector, _, exposure = CAMERAS[request.param]
    running = iocs(instrument)
    prefix = running.prefix
    if instrument == "fibsem":
        for name, value in FIBSEM_SETUP[detector]:
            if name.startswith("stage:"):
                _move(prefix, name, value)
            else:
                _put(prefix, name, value)
    elif instrument != "xrm":  # the XRM's frames stay dark (offset and read noise)
        _put(prefix, "shutter:Cmd", "Open")
    return SimpleNamespace(prefix=prefix + detector, exposure=exposure, name=request.param)


def _connect_all_signals(det, timeout: float) -> None:
    """``det.wait_for_connection(all_signals=True)``, every signal waited on together.

    ophyd creates a lazy signal (most of the stock classes' are) at its first access
    and then, by default, waits for it alone within 1.0 s; ``all_signals=True``
    creates them one by one that way, and under load one took longer ("Stats1:
    MaxValue_RBV could not connect within 1.0-second timeout"). With
    ``lazy_wait_for_connection`` off on every device they are created without a wait,
    and the one call waits up to ``timeout`` for all of them.
    """
    det.lazy_wait_for_connection = False
    for _, device in det.walk_subdevices(include_lazy=True):
        device.lazy_wait_for_connection = False
    det.wait_for_connection(all_signals=True, timeout=timeout)


def test_stock_detector_stages_counts_writes_and_serves_plugins(camera, tmp_path):
    from bluesky import RunEngine
    from bluesky.plans import count

    det = _stock_detector_class()(camera.prefix, name="det")
    det.hdf5.write_path_template = str(tmp_path) + "/"
    _connect_all_signals(det, timeout=60)
    det.hdf5.kind = "normal"
    for stats in (det.stats1, det.stats2):
        stats.kind = "hinted"
        for name in ("total", "mean_value", "min_value", "max_value", "sigma"):
            getattr(stats, name).kind = "normal"
    ny = int(det.cam.array_size.array_size_y.get())
    nx = int(det.cam.array_size.array_size_x.get())
    roi = (nx // 4, ny // 5, nx // 2, ny // 3)  # MinX, MinY, SizeX, SizeY
    det.roi1.min_xyz.min_x.set(roi[0]).wait(5)
    det.roi1.min_xyz.min_y.set(roi[1]).wait(5)
    det.roi1.size.x.set(roi[2]).wait(5)
    det.roi1.size.y.set(roi[3]).wait(5)
    det.stats2.nd_array_port.set(det.roi1.port_name.get()).wait(5)
    det.cam.acquire_time.set(camera.exposure).wait(5)
    det.cam.num_images.set(1).wait(5)
    counted = int(det.stats1.array_counter.get())

    docs: list[tuple[str, dict]] = []
    RE = RunEngine({})
    RE(count([det], num=FRAMES), lambda name, doc: docs.append((name, doc)))

    assert docs[-1][1]["exit_status"] == "success"
    events = [doc for name, doc in docs if name == "event"]
    assert len(events) == FRAMES
    (resource,) = [doc for name, doc in docs if name == "resource"]
    path = f"{resource['root'].rstrip('/')}/{resource['resource_path']}"
    with h5py.File(path, "r", swmr=True) as f:
        frames = f["/entry/data/data"][:]
    assert frames.shape == (FRAMES, ny, nx)
    x0, y0, sx, sy = roi
    for event, frame in zip(events, frames, strict=True):
        data, full = event["data"], frame.astype(np.float64)
        part = full[y0 : y0 + sy, x0 : x0 + sx]
        for key, pixels in (("det_stats1", full), ("det_stats2", part)):
            np.testing.assert_allclose(data[f"{key}_total"], pixels.sum(), rtol=1e-9)
            np.testing.assert_allclose(data[f"{key}_mean_value"], pixels.mean(), rtol=1e-9)
            np.testing.assert_allclose(data[f"{key}_sigma"], pixels.std(), rtol=1e-6)
            assert data[f"{key}_min_value"] == pixels.min()
            assert data[f"{key}_max_value"] == pixels.max()
    assert frames.std() > 0  # noise at least: the statistics compare real numbers
    assert int(det.stats1.array_counter.get()) == counted + FRAMES
    image = np.asarray(det.image1.image).astype(np.int16).view(np.uint16)
    np.testing.assert_array_equal(image, frames[-1])
    assert tuple(det.roi1.array_size.get()[1:]) == (sy, sx)


def test_every_stock_pv_is_served_on_every_camera(iocs):
    """Every PV of the stock classes, on all six cameras, searched for at once."""
    names = {camera: stock_pvs.device_pvs(_stock_detector_class(), iocs(instrument).prefix
                                          + detector)
             for camera, (instrument, detector, _, _) in CAMERAS.items()}  # fmt: skip
    assert all(len(pvs) > 500 for pvs in names.values())
    missing = set(stock_pvs.unserved([pv for pvs in names.values() for pv in pvs], timeout=60))
    unserved = {camera: sorted(set(pvs) & missing) for camera, pvs in names.items()}
    assert not missing, {camera: (len(pvs), pvs[:8]) for camera, pvs in unserved.items()}


def test_every_documented_camera_pv_is_served(iocs):
    from ophyd import EpicsSignalRO

    prefix = iocs("demo").prefix
    names = pv_docs.documented_pvs(DOCS, "## PVs of a simulated camera", by_kind=PAIR)
    assert len(names) > 200
    assert not stock_pvs.unserved([prefix + name for name in names], timeout=60)
    string = EpicsSignalRO(prefix + "Stats3:PluginType_RBV", name="plugin_type")
    assert string.get() == "NDPluginStats"  # a DBR_STRING reads as str, no string=True
