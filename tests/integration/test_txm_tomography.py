"""A TXM session end to end: tomography and a vertical mosaic over CA, live reconstruction,
stitching and particle labelling stored as derived runs linked to the raw runs; the runs
exported (DXchange, TIFF) and the DXchange files reconstructed from the file alone.

The TXM IOC runs at binning 4 with 128 x 128 frames (0.26 um pixels) to stay fast.
"""

from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
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


@pytest.fixture(scope="module")
def tomo_uid(txm_session):
    """A step tomogram (91 projections), reconstructed live; its raw uid."""
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
    return uid


def _reconstruction_of(session, uid):
    """The derived run reconstructing raw run ``uid`` (exactly one)."""
    derived = [
        session.catalog.run(r.uid)
        for r in _derived(session, "tomo_reconstruction")
        if session.catalog.run(r.uid).metadata["start"]["derived_from"] == uid
    ]
    assert len(derived) == 1
    return derived[0]


def test_tomo_scan_is_reconstructed_and_stored_as_a_derived_run(txm_session, tomo_uid):
    session, uid = txm_session, tomo_uid
    assert not session.pipeline.errors
    raw = session.catalog.run(uid)
    assert raw.metadata["stop"]["exit_status"] == "success"
    # Each stream's frames read back from the IOC's files (one file per block of frames).
    frames = {s: np.asarray(raw[s].read()["camera_image"]) for s in ("dark", "flat", "primary")}
    assert [len(frames[s]) for s in ("dark", "flat", "primary")] == [3, 6, 91]
    # Shutter closed for darks: only the detector offset, far below the open beam.
    assert frames["flat"].mean() - frames["dark"].mean() > 10 * frames["dark"].std()
    assert frames["primary"].mean() < frames["flat"].mean()  # the sample absorbs
    derived = _reconstruction_of(session, uid)
    start = derived.metadata["start"]
    assert np.isfinite(start["parameters"]["center_px"])
    assert all(Path(p).exists() for p in start["figures"])
    volume = np.asarray(derived["primary"].read()["volume"])
    assert volume.shape[-3:] == (128, 128, 128)
    assert np.isfinite(volume).all() and volume.std() > 0


@pytest.fixture(scope="module")
def mosaic_uids(txm_session):
    """A vertical mosaic of 2 tiles (61 projections each), stitched live; the tiles' uids."""
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
    return uids


def test_vertical_mosaic_is_stitched_and_particles_labelled(txm_session, mosaic_uids):
    session, uids = txm_session, mosaic_uids
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


# ------------------------------------------------------------------------------ exports


def _read_dxchange(path):
    """A DXchange file as a tomography tool reads it (h5py only): tomopy's conventions.

    ``/exchange/theta`` is in degrees (DXchange); tomopy wants radians, so it is
    converted here, as ``dxchange.read_aps_32id`` does.
    """
    with h5py.File(path, "r") as f:
        data = f["/exchange/data"][()]
        white = f["/exchange/data_white"][()]
        dark = f["/exchange/data_dark"][()]
        theta = np.deg2rad(f["/exchange/theta"][()])
        pixel = float(f["/measurement/instrument/detector/pixel_size_x"][()])
    return data, white, dark, theta, pixel


def test_dxchange_export_reconstructs_as_the_live_reconstruction(txm_session, tomo_uid, tmp_path):
    """Issue 12: a tomography run as a DXchange file, reconstructed from the file alone."""
    from multiscope.analysis.tomo import find_center, minus_log, normalize, reconstruct
    from multiscope.export import export_run

    session = txm_session
    raw = session.catalog.run(tomo_uid)
    written = export_run(raw, tmp_path, format="dxchange")
    assert [p.name for p in written] == ["metadata.json", f"tomo_scan_{tomo_uid[:8]}.h5"]
    data, white, dark, theta, pixel = _read_dxchange(written[1])
    assert data.shape == (91, 128, 128) and white.shape == (6, 128, 128)
    assert dark.shape == (3, 128, 128) and pixel == pytest.approx(0.26)
    primary = raw["primary"].read()
    np.testing.assert_allclose(theta, np.deg2rad(np.asarray(primary["sample_theta"])))
    np.testing.assert_array_equal(data, np.asarray(primary["camera_image"])[:, 0])

    live = _reconstruction_of(session, tomo_uid)
    live_volume = np.asarray(live["primary"].read()["volume"]).reshape(128, 128, 128)
    live_center = live.metadata["start"]["parameters"]["center_px"]
    proj = minus_log(normalize(data, white, dark))
    center = find_center(proj, theta)  # from the file alone
    volume = reconstruct(proj, theta, center=center)
    same_center = reconstruct(proj, theta, center=live_center)
    scale = float(np.sqrt(np.mean(live_volume**2)))
    rel = float(np.sqrt(np.mean((volume - live_volume) ** 2))) / scale
    rel_same = float(np.sqrt(np.mean((same_center - live_volume) ** 2))) / scale
    print(
        f"centre from the file {center:.2f} px, live {live_center:.2f} px; relative RMS "
        f"difference to the live volume {rel:.4f} ({rel_same:.2e} at the live centre)"
    )
    assert abs(center - live_center) < 0.5
    assert rel_same < 1e-3  # the same frames, flats, darks and angles as the live one
    assert rel < 0.1


def test_tiff_export_of_the_reconstruction_keeps_the_voxel_size(txm_session, tomo_uid, tmp_path):
    from multiscope.export import export_run

    live = _reconstruction_of(txm_session, tomo_uid)
    written = export_run(live, tmp_path, format="tiff")
    assert [p.name for p in written] == ["metadata.json", "volume.tif"]
    with tifffile.TiffFile(written[1]) as tif:
        volume = tif.asarray()
        assert tif.series[0].axes == "ZYX"
        x_res = tif.pages[0].tags["XResolution"].value
        assert x_res[0] / x_res[1] == pytest.approx(1 / 0.26, rel=1e-5)
        assert tif.imagej_metadata["spacing"] == pytest.approx(0.26)
        assert tif.imagej_metadata["unit"] == "um"
    expected = np.asarray(live["primary"].read()["volume"]).reshape(volume.shape)
    np.testing.assert_array_equal(volume, expected)
    assert volume.shape == (128, 128, 128)
    # The raw run's frames: one stack per stream, no singleton axis.
    raw_files = export_run(txm_session.catalog.run(tomo_uid), tmp_path / "raw", format="tiff")
    with tifffile.TiffFile(tmp_path / "raw" / "primary_camera_image.tif") as tif:
        assert tif.series[0].shape == (91, 128, 128)
    assert len(raw_files) == 4  # metadata.json, dark, flat, primary


def test_export_command_writes_a_dxchange_file_per_mosaic_tile(
    txm_session, mosaic_uids, tmp_path, capsys
):
    """``multiscope export <stitched run> --format dxchange``: one file per tile.

    The command runs in this process (``cli.main``): another interpreter would add its
    start-up, ~10 s (``test_cli.py`` runs ``python -m multiscope export``).
    """
    from multiscope.cli import main

    session = txm_session
    (stitched,) = _derived(session, "mosaic_stitch")
    data_dir = ["--data-dir", str(session.data_dir)]
    out = ["--out", str(tmp_path / "tiles")]
    assert main([*data_dir, "export", stitched.uid[:12], "--format", "dxchange", *out]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 3 and printed[0].endswith("metadata.json")  # and the 2 tiles
    files = sorted((tmp_path / "tiles").glob("*.h5"), key=lambda f: f.stem[-2:])  # tile order
    assert [f.name for f in files] == [
        f"tomo_scan_{uid[:8]}_tile{k:02d}.h5" for k, uid in enumerate(mosaic_uids)
    ]
    for k, path in enumerate(files):
        data, white, dark, theta, _ = _read_dxchange(path)
        assert data.shape == (61, 128, 128) and white.shape[0] == 4 and dark.shape[0] == 2
        assert np.rad2deg(np.ptp(theta)) == pytest.approx(180 - 180 / 61, abs=0.05)
        with h5py.File(path, "r") as f:
            assert f["/process/acquisition/tile_index"][()] == k
    # A format that does not fit the run: a clear error, exit status 2, no file.
    recon = _derived(session, "tomo_reconstruction")[0].uid
    out = tmp_path / "refused"
    argv = [*data_dir, "export", recon[:12], "--format", "dxchange", "--out", str(out)]
    assert main(argv) == 2
    assert "(tomo_reconstruction) is not a tomography run" in capsys.readouterr().err
    assert not list(out.glob("*"))
