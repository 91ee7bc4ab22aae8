"""Mosaic stitching from the derived runs of tile reconstructions (synthetic sphere phantom).

Three tiles of one tall phantom are acquired (projections, Poisson noise, HDF5
frames referenced by stream documents), reconstructed by ``TomoReconstructor``,
whose published documents feed ``MosaicStitcher``. The true stage steps differ
from the nominal ones by a fraction of a voxel, as a real stage's would.
"""

import csv

import h5py
import numpy as np
import pytest
from synthetic_tomo import RunSpec, random_spheres, tomo_run

from multiscope.callbacks.mosaic import MosaicStitcher
from multiscope.callbacks.tomo import TomoReconstructor
from multiscope.frame_files import FrameReader

NY, NX, PIXEL_UM = 40, 80, 0.2
NUM_TILES, OVERLAP = 3, 0.25
NOMINAL_STEP = NY * (1 - OVERLAP)  # 30 rows
TRUE_SHIFTS = np.array([0.0, 30.4, 59.7])  # rows; the stage is off by up to 0.4 voxel
# Particle-count tolerance: spheres are >= 3 voxels apart and >= 3 voxels in radius,
# so every one should be found; one miss or split is allowed.
COUNT_TOLERANCE = 1


def test_stitcher_publishes_after_the_last_tile_with_measured_offsets(tmp_path):
    height = int(TRUE_SHIFTS[-1]) + NY
    spheres = random_spheres(
        np.random.default_rng(3),
        14,
        z_range=(1, height - 1),
        lateral=28,
        radius=(3.0, 4.5),
        gap=3.0,
    )
    stitched_docs = []
    stitcher = MosaicStitcher(
        tmp_path / "out", publish=lambda name, doc: stitched_docs.append((name, doc))
    )
    recon_docs = []

    def publish(name, doc):  # the session's fan-out: catalog writer + stitcher
        recon_docs.append((name, doc))
        stitcher(name, doc)

    recon = TomoReconstructor(tmp_path / "out", publish=publish)
    raw_uids = {}
    for n_done, index in enumerate((1, 2, 0)):  # tiles may arrive in any order
        spec = RunSpec(
            spheres,
            ny=NY,
            nx=NX,
            center=(NX - 1) / 2 + 2.2,
            num_projections=160,
            z_shift=TRUE_SHIFTS[index],
            seed=10 + index,
            pixel_size_um=PIXEL_UM,
            mosaic={
                "mosaic_id": "tab3",
                "tile_index": index,
                "num_tiles": NUM_TILES,
                "z_um": index * NOMINAL_STEP * PIXEL_UM,
                "overlap_fraction": OVERLAP,
                "tile_height_um": NY * PIXEL_UM,
            },
        )
        for name, doc in tomo_run(spec, tmp_path / "raw"):
            if name == "start":
                raw_uids[index] = doc["uid"]
            recon(name, doc)
        if n_done < NUM_TILES - 1:
            assert stitched_docs == [] and "tab3" in stitcher.pending
    assert "tab3" not in stitcher.pending

    names = [name for name, _ in stitched_docs]
    assert names == ["start", "descriptor", "stream_resource", "stream_datum", "event", "stop"]
    start = stitched_docs[0][1]
    assert start["plan_name"] == "mosaic_stitch"
    assert start["derived_from"] == [raw_uids[i] for i in range(NUM_TILES)]  # top to bottom
    recon_uids = [d["uid"] for n, d in recon_docs if n == "start"]
    assert sorted(start["reconstructions"]) == sorted(recon_uids)
    assert start["parameters"]["overlap_px"] == round(OVERLAP * NY)

    result = stitcher.results["tab3"]
    offsets = result["offsets"]
    np.testing.assert_allclose(offsets[:, 0], TRUE_SHIFTS, atol=0.5)
    np.testing.assert_allclose(offsets[:, 1:], 0, atol=0.5)
    event = stitched_docs[4][1]
    results = stitched_docs[0][1]["results"]
    np.testing.assert_allclose(results["offsets_vox"], offsets)
    np.testing.assert_allclose(results["nominal_offsets_vox"], [0, 30, 60])
    deviation = np.max(np.abs(offsets[:, 0] - [0, 30, 60]))
    assert event["data"]["max_offset_deviation_vox"] == pytest.approx(deviation)
    # Event data are scalars only: the catalog's tables store nothing else.
    assert all(np.ndim(v) == 0 for k, v in event["data"].items() if k != "volume")

    # Particles: every sphere lies inside the stitched volume and the field of view.
    assert result["volume"].shape[0] == height
    count = event["data"]["particle_count"]
    assert abs(count - len(spheres)) <= COUNT_TOLERANCE, count
    true_mean_um = np.mean([2 * s.r for s in spheres]) * PIXEL_UM
    assert event["data"]["mean_diameter_um"] == pytest.approx(true_mean_um, rel=0.1)

    paths = result["paths"]
    for key in ("slices_figure", "histogram_figure"):
        assert paths[key].stat().st_size > 10_000
        assert str(paths[key]) in start["figures"]
    with open(paths["particles"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == count and "equivalent_diameter" in rows[0]
    with h5py.File(paths["volume"], "r") as f:
        assert f["/entry/data/data"].shape == (1, *result["volume"].shape)

    # The published stream documents lead to the stitched volume.
    reader = FrameReader()
    reader.add_descriptor(stitched_docs[1][1])
    reader.add_resource(stitched_docs[2][1])
    np.testing.assert_array_equal(reader.read(stitched_docs[3][1]).data[0], result["volume"])
    reader.close()


def test_stitcher_ignores_runs_outside_a_mosaic(tmp_path):
    stitcher = MosaicStitcher(tmp_path, publish=lambda n, d: pytest.fail("published"))
    stitcher("start", {"uid": "r", "time": 0, "plan_name": "tomo_reconstruction"})
    stitcher("stop", {"uid": "s", "time": 0, "run_start": "r", "exit_status": "success"})
    stitcher("start", {"uid": "c", "time": 0, "plan_name": "count", "mosaic": {"mosaic_id": "x"}})
    stitcher("stop", {"uid": "t", "time": 0, "run_start": "c", "exit_status": "success"})
    assert stitcher.pending == {} and stitcher.results == {}
