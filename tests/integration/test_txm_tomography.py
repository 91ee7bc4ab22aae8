"""A TXM session end to end: tomography and a vertical mosaic over CA, live reconstruction,
stitching and particle labelling stored as derived runs linked to the raw runs.

The TXM IOC runs at binning 4 with 128 x 128 frames (0.26 um pixels) to stay fast.
"""

from pathlib import Path

import numpy as np
import pytest
from conftest import txm_session as txm_session_on_iocs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def txm_session(ca_port_pool, tmp_path_factory):
    extra_args = ["--binning", "4", "--shape", "128", "128"]
    with txm_session_on_iocs(ca_port_pool, tmp_path_factory, "txm-tomo", extra_args) as (
        session,
        _,
    ):
        session.devices["sample"].theta.velocity.set(180).wait(5)
        yield session


def _derived(session, plan_name):
    return [r for r in session.catalog.runs(limit=100) if r.plan_name == plan_name]


def test_tomo_scan_is_reconstructed_and_stored_as_a_derived_run(txm_session):
    session = txm_session
    d = session.devices
    pixel_um = d["objective"].pixel_size.get() / 1000
    assert pixel_um == pytest.approx(0.26)
    (uid,) = session.RE(
        session.plans["tomo_scan"](
            d["camera"], d["sample"], d["shutter"], num_projections=91, exposure_s=0.02,
            num_darks=3, num_flats=3, pixel_size_um=pixel_um, energy_keV=8.0, sample_id="tab",
        )
    )  # fmt: skip
    assert session.drain(300)
    assert not session.pipeline.errors
    raw = session.catalog.run(uid)
    assert raw.metadata["stop"]["exit_status"] == "success"
    # Each stream's frames read back from the IOC's files (one file per block of frames).
    frames = {s: np.asarray(raw[s].read()["camera_image"]) for s in ("dark", "flat", "primary")}
    assert [len(frames[s]) for s in ("dark", "flat", "primary")] == [3, 6, 91]
    # Shutter closed for darks: only the detector offset, far below the open beam.
    assert frames["flat"].mean() - frames["dark"].mean() > 10 * frames["dark"].std()
    assert frames["primary"].mean() < frames["flat"].mean()  # the sample absorbs
    derived = [
        session.catalog.run(r.uid)
        for r in _derived(session, "tomo_reconstruction")
        if session.catalog.run(r.uid).metadata["start"]["derived_from"] == uid
    ]
    assert len(derived) == 1
    start = derived[0].metadata["start"]
    assert np.isfinite(start["parameters"]["center_px"])
    assert all(Path(p).exists() for p in start["figures"])
    volume = np.asarray(derived[0]["primary"].read()["volume"])
    assert volume.shape[-3:] == (128, 128, 128)
    assert np.isfinite(volume).all() and volume.std() > 0


def test_vertical_mosaic_is_stitched_and_particles_labelled(txm_session):
    session = txm_session
    d = session.devices
    rows = int(d["camera"].cam.array_size.array_size_y.get())
    pixel_um = d["objective"].pixel_size.get() / 1000
    d["sample"].z.set(100).wait(30)
    uids = session.RE(
        session.plans["vertical_mosaic_tomo"](
            d["camera"], d["sample"], d["shutter"], num_tiles=2, tile_height_um=rows * pixel_um,
            overlap_fraction=0.2, num_projections=61, exposure_s=0.02, num_darks=2,
            num_flats=2, pixel_size_um=pixel_um, energy_keV=8.0,
        )
    )  # fmt: skip
    assert len(uids) == 2
    assert session.drain(300)
    assert not session.pipeline.errors
    stitched = _derived(session, "mosaic_stitch")
    assert len(stitched) == 1
    run = session.catalog.run(stitched[0].uid)
    start = run.metadata["start"]
    assert sorted(start["derived_from"]) == sorted(uids)
    data = run["primary"].read()
    assert int(np.asarray(data["particle_count"])[0]) > 0
    offsets = np.asarray(start["results"]["offsets_vox"])
    nominal = np.asarray(start["results"]["nominal_offsets_vox"])
    # The measured z step of the second tile agrees with the stage step (0.8 x 128 rows).
    assert offsets[1][0] == pytest.approx(nominal[1], abs=1.0)
    assert float(np.asarray(data["max_offset_deviation_vox"])[0]) < 1.0
    assert all(Path(p).exists() for p in start["figures"])
