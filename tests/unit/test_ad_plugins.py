"""The simulated ADCore plugins' arithmetic (statistics, ROI) and port chaining, in-process."""

import asyncio
from pathlib import Path

import numpy as np
import pytest
from pv_docs import documented_pvs

from sim_devices import ad_records
from sim_devices.ad_plugins import frame_statistics
from sim_devices.areadetector import SimAreaDetector

SHAPE = (40, 60)


def _frame(seed=0):
    return np.random.default_rng(seed).integers(0, 60000, SHAPE, dtype=np.uint16)


def test_statistics_are_numpy_s_on_the_frame():
    frame = _frame()
    frame[7, 11], frame[30, 50] = 0, 65535  # unique extremes
    frame[frame == 0] = 1
    frame[7, 11] = 0
    pixels = frame.astype(np.float64)
    stats = frame_statistics(frame, basic=True, centroid_threshold=1000.0)
    assert stats["total"] == pixels.sum() == stats["net"]
    assert stats["mean_value"] == pytest.approx(pixels.mean(), rel=1e-12)
    assert stats["sigma"] == pytest.approx(pixels.std(), rel=1e-9)
    assert (stats["min_value"], stats["min_x"], stats["min_y"]) == (0, 11, 7)
    assert (stats["max_value"], stats["max_x"], stats["max_y"]) == (65535, 50, 30)
    weights = np.where(pixels >= 1000.0, pixels, 0.0)
    ys, xs = np.indices(SHAPE)
    cx = (weights * xs).sum() / weights.sum()
    cy = (weights * ys).sum() / weights.sum()
    assert stats["centroid_x"] == pytest.approx(cx, rel=1e-12)
    assert stats["centroid_y"] == pytest.approx(cy, rel=1e-12)
    sx = np.sqrt((weights * (xs - cx) ** 2).sum() / weights.sum())
    assert stats["sigma_x"] == pytest.approx(sx, rel=1e-9)
    assert stats["centroid_total"] == weights.sum()
    assert "total" not in frame_statistics(frame, basic=False, centroid_threshold=0.0)


def _chain(frame, setup):
    """Run ``frame`` from CAM1 through a detector's plugins after ``setup(detector)``."""
    detector = SimAreaDetector(prefix="U:", scene=lambda ctx: frame, shape=SHAPE)

    async def run():
        await setup(detector)
        await detector.publish("CAM1", frame, {}, 1, 0.0)

    asyncio.run(run())
    return detector


async def _enable(plugin):
    await plugin.enable.readback.write("Enable")


def test_roi_cuts_bins_and_mirrors_and_stats_behind_it_see_the_region():
    frame = _frame(1)

    async def setup(det):
        for plugin in (det.roi1, det.stats1, det.stats2, det.image1):
            await _enable(plugin)
        for name, value in (("min_x", 10), ("min_y", 4), ("size_x", 20), ("size_y", 30),
                            ("bin_x", 2), ("bin_y", 3)):  # fmt: skip
            await getattr(det.roi1, name).readback.write(value)
        await det.roi1.reverse_x.readback.write("Yes")
        await det.stats2.nd_array_port.readback.write("ROI1")

    det = _chain(frame, setup)
    region = frame[4:34, 10:30].astype(np.int64).reshape(10, 3, 10, 2).sum(axis=(1, 3))
    expected = np.clip(region, 0, 65535)[:, ::-1]
    assert (det.roi1.array_size_x.value, det.roi1.array_size_y.value) == (10, 10)
    assert det.stats2.total.value == expected.sum()
    assert det.stats2.max_value.value == expected.max()
    assert det.stats1.total.value == frame.astype(np.float64).sum()
    assert det.stats2.array_counter.readback.value == det.stats1.array_counter.readback.value == 1
    image = np.asarray(det.image1.array_data.value).view(np.uint16).reshape(SHAPE)
    np.testing.assert_array_equal(image, frame)
    assert list(det.stats2.dimensions_rbv.value) == [10, 10]  # the ROI's output
    assert (det.stats1.dim0_sa.value, det.stats1.dim1_sa.value) == (SHAPE[1], SHAPE[0])


def test_a_disabled_plugin_does_nothing_and_stops_its_chain():
    frame = _frame(2)

    async def setup(det):
        await _enable(det.stats1)
        await det.stats1.nd_array_port.readback.write("ROI1")  # ROI1 stays disabled

    det = _chain(frame, setup)
    assert det.roi1.array_counter.readback.value == 0
    assert det.stats1.array_counter.readback.value == 0
    assert det.stats1.total.value == 0
    assert len(det.image1.array_data.value) == 1  # never written


# The accepted records of each table, by the prefixes that serve them.
RECORD_TABLES = {
    "NDARRAY_BASE_RECORDS": ("cam1:", "HDF1:", "image1:", "ROI1:", "ROI4:", "Stats1:", "Stats5:"),
    "CAM_RECORDS": ("cam1:",),
    "PLUGIN_RECORDS": ("image1:", "HDF1:", "ROI1:", "ROI4:", "Stats1:", "Stats5:"),
    "ROI_RECORDS": ("ROI1:", "ROI4:"),
    "STATS_RECORDS": ("Stats1:", "Stats5:"),
    "HDF5_RECORDS": ("HDF1:",),
}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "areadetector.md"


def test_every_accepted_record_is_served_and_documented():
    detector = SimAreaDetector(prefix="U:", scene=lambda ctx: _frame(), shape=SHAPE)
    documented = set(documented_pvs(DOCS, "## PVs of a simulated camera",
                                    by_kind={"setpoint + `_RBV`": ("", "_RBV")}))  # fmt: skip
    for table, prefixes in RECORD_TABLES.items():
        names = ad_records.record_pv_names(getattr(ad_records, table))
        for prefix in prefixes:
            assert not [n for n in names if f"U:{prefix}{n}" not in detector.pvdb], prefix
        # The docs name them under the first of their prefixes.
        assert not [n for n in names if prefixes[0] + n not in documented], table
    # Each camera PV is one record: no table serves a name a group already has.
    for group in (detector.cam, detector.hdf, detector.image1, detector.roi1, detector.stats1):
        assert len(group.pvdb) == len(type(group)._pvs_), type(group).__name__
