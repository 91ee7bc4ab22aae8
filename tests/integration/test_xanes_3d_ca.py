"""Fly ``xanes_3d`` over Channel Access on the simulated TXM IOC, with a jump at every energy.

The IOC renders its Ni K-edge chemistry (``--valence-pattern mixed``) and moves the
sample image by a seeded jump at every energy (``--energy-drift-px 1.5``, at most 3
px; each frame records it as the HDF5 attributes ``drift_x_px`` / ``drift_y_px``).
Eight energies, a 24-projection fly tomogram each (binning 4, 128 x 128 px): the
run must complete and read back from the catalog with every frame and angle, and
the drift :class:`~multiscope.callbacks.xanes.LiveXANESMap` measures on the
projections must match the IOC's recorded jumps (relative to the first energy, its
reference) within 0.3 px in rows and in columns.  The columns need every energy's
tomogram at the reference's angles: the rotation's position trigger starts each
sweep's frames at the same angle (decision 0008).  With the client-side gate it
replaced, the sweeps started 0.6-3 deg apart and the column errors reached 0.3-1.9 px.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from conftest import txm_session

from multiscope.callbacks.xanes import LiveXANESMap
from multiscope.frame_files import uri_to_path

pytestmark = pytest.mark.integration

ENERGIES_KEV = [8.28, 8.30, 8.32, 8.333, 8.35, 8.37, 8.40, 8.43]
NUM_PROJECTIONS = 24
EXPOSURE_S = 0.05
PERIOD_S = 0.1  # 75 deg/s


@pytest.fixture(scope="module")
def txm(ca_port_pool, tmp_path_factory):
    """A TXM session on its own simulated IOC with XANES chemistry and energy jumps."""
    extra_args = ["--binning", "4", "--shape", "128", "128", "--seed", "3",
                  "--valence-pattern", "mixed", "--energy-drift-px", "1.5",
                  "--energy-drift-max-px", "3"]  # fmt: skip
    with txm_session(ca_port_pool, tmp_path_factory, "xanes3d", extra_args) as (session, _):
        yield session


def _primary_attributes(documents, name: str) -> np.ndarray:
    """Per-frame HDF5 attribute ``name`` of the primary frames, in seq_num order."""
    descriptors = {d["uid"]: d["name"] for n, d in documents if n == "descriptor"}
    resources = {d["uid"]: d for n, d in documents if n == "stream_resource"}
    values = {}
    for n, d in documents:
        if n != "stream_datum" or descriptors[d["descriptor"]] != "primary":
            continue
        resource = resources[d["stream_resource"]]
        if resource["data_key"] != "camera_image":
            continue
        with h5py.File(uri_to_path(resource["uri"]), "r") as f:
            rows = f[f"/entry/instrument/NDAttributes/{name}"]
            chunk = rows[d["indices"]["start"] : d["indices"]["stop"]]
        for k, v in enumerate(chunk):
            values[d["seq_nums"]["start"] + k] = float(v)
    return np.array([values[s] for s in sorted(values)])


@pytest.fixture(scope="module")
def fly_run(txm, tmp_path_factory):
    """Run the fly xanes_3d, read it back, map it; return what the tests check."""
    tmp_path = tmp_path_factory.mktemp("xanes3d-maps")
    session = txm
    d, plans = session.devices, session.plans
    camera, energy = d["camera"], d["energy"]
    energy.calibration.put({})  # thin lens: the IOC's optics are thin lenses
    grid = plans["energy_grid"]("Ni", energies_keV=ENERGIES_KEV, whiteline_eV=(-5, 40))
    pixel_um = d["objective"].pixel_size.get() / 1000
    pulses_before = d["sample"].rotation_trigger.pulses.get()
    documents = []
    token = session.RE.subscribe(lambda name, doc: documents.append((name, doc)))
    t0 = time.monotonic()
    try:
        (uid,) = session.RE(
            plans["xanes_3d"](
                camera, energy, d["sample"], d["shutter"], grid, scan_mode="fly",
                num_projections=NUM_PROJECTIONS, exposure_s=EXPOSURE_S, frame_period_s=PERIOD_S,
                flat_policy="every_n", flat_every=4, tomo_flat_policy="start", num_flats=2,
                num_darks=2, pixel_size_um=pixel_um, sample_id="NMC811 tab",
            )
        )  # fmt: skip
    finally:
        session.RE.unsubscribe(token)
    elapsed = time.monotonic() - t0
    assert session.catalog.drain(120)
    run = session.catalog.run(uid)
    start, stop = run.metadata["start"], run.metadata["stop"]
    assert stop["exit_status"] == "success", stop.get("reason")
    print(f"fly xanes_3d: estimated {start['estimated_duration_s']:.1f} s, took {elapsed:.1f} s")
    assert start["tomo"]["scan_mode"] == "fly"
    n_frames = len(ENERGIES_KEV) * NUM_PROJECTIONS

    # Read back from the catalog: every projection, its angle; the energies per tomogram.
    primary = run["primary"].read()
    frames = np.asarray(primary["camera_image"]).reshape(-1, 128, 128)
    theta = np.asarray(primary["camera_theta"], float).reshape(len(ENERGIES_KEV), -1)
    assert frames.shape[0] == n_frames and frames.mean() > 100
    assert np.all(np.diff(theta, axis=1) > 0)  # one sweep per energy
    # Each sweep's frames started on the rotation's position trigger: the first is
    # exposed about the first angle, and every energy repeats the reference's angles.
    assert d["sample"].rotation_trigger.pulses.get() - pulses_before == len(ENERGIES_KEV)
    np.testing.assert_allclose(theta[:, 0], 0.0, atol=0.01)
    assert np.abs(theta - theta[:1]).max() < 0.01
    marks = run["xanes_energy"].read()
    assert np.asarray(marks["xanes_energy_index"]).tolist() == list(range(len(ENERGIES_KEV)))
    np.testing.assert_allclose(marks["energy_energy"], ENERGIES_KEV, atol=1e-3)

    # The XANES map of the run's documents; its shifts against the IOC's recorded jumps.
    live = LiveXANESMap(tmp_path / "maps")
    t1 = time.monotonic()
    for name, doc in documents:
        live(name, doc)
    print(f"LiveXANESMap: {time.monotonic() - t1:.1f} s for {len(ENERGIES_KEV)} energies")
    assert sorted(live.energies_done) == list(range(len(ENERGIES_KEV)))
    with h5py.File(live.paths["maps"], "r") as f:
        shifts = f["shifts_px"][()]
        assert f["whiteline_eV"].shape == (128, 128, 128)
    drift = np.stack(
        [
            _primary_attributes(documents, "drift_y_px"),
            _primary_attributes(documents, "drift_x_px"),
        ],
        axis=1,
    ).reshape(len(ENERGIES_KEV), NUM_PROJECTIONS, 2)
    assert np.ptp(drift, axis=1).max() < 1e-6  # the jump is the same at every angle
    truth = -(drift[:, 0] - drift[0, 0])  # the shift that undoes it, relative to the reference
    err = shifts - truth
    print("recorded jumps (rows, cols) px:", np.round(drift[:, 0], 3).tolist())
    print("shift error (rows, cols) px:", np.round(err, 3).tolist())
    print(f"angle mismatch to the reference up to {live.parameters['max_angle_gap_deg']} deg")
    return SimpleNamespace(
        shifts=shifts, truth=truth, err=err, uid=uid, volumes=live.paths["volumes"],
        centers_px=live.parameters["centers_px"], pixel_um=pixel_um, session=session,
    )  # fmt: skip


def test_fly_xanes_3d_completes_and_corrects_the_jumps(fly_run):
    truth, err = fly_run.truth, fly_run.err
    assert np.abs(truth).max() > 1.0  # the IOC did jump
    assert np.abs(err[:, 0]).max() < 0.3  # rows: the slices' z
    assert np.abs(err[:, 1]).max() < 0.3  # columns: the rotation centre


def test_dxchange_export_gives_one_tomogram_per_energy(fly_run, tmp_path):
    """Issue 12: an xanes_3d run as DXchange files, one per energy, read back with h5py
    alone; the reference energy's file reconstructs as the live map's volume."""
    from multiscope.analysis.tomo import find_center, minus_log, normalize, reconstruct
    from multiscope.callbacks.tomo import structured_rows
    from multiscope.export import export_run

    run = fly_run.session.catalog.run(fly_run.uid)
    written = export_run(run, tmp_path, format="dxchange")[1:]
    assert [p.name for p in written] == [
        f"xanes_3d_{fly_run.uid[:8]}_e{i:03d}.h5" for i in range(len(ENERGIES_KEV))
    ]
    theta_all = np.asarray(run["primary"].read()["camera_theta"], float)
    for i, path in enumerate(written):
        with h5py.File(path, "r") as f:
            assert f["/exchange/data"].shape == (NUM_PROJECTIONS, 128, 128)
            theta_deg = f["/exchange/theta"][()]
            energy = f["/measurement/instrument/monochromator/energy"][()]
            flats_from = f["/process/acquisition/flats_from_energy_index"][()]
        rows = slice(i * NUM_PROJECTIONS, (i + 1) * NUM_PROJECTIONS)
        np.testing.assert_array_equal(theta_deg, theta_all[rows])  # mid-exposure angles
        assert energy == pytest.approx(ENERGIES_KEV[i], abs=1e-3)
        # flat_every=4: sets at energies 0 and 4; each energy has the nearest in energy
        gap = [abs(ENERGIES_KEV[i] - ENERGIES_KEV[k]) for k in (0, 4)]
        assert list(np.atleast_1d(flats_from)) == [0 if gap[0] <= gap[1] else 4]

    with h5py.File(written[0], "r") as f:  # the reference energy: no drift correction
        data, white = f["/exchange/data"][()], f["/exchange/data_white"][()]
        dark, theta = f["/exchange/data_dark"][()], np.deg2rad(f["/exchange/theta"][()])
        pixel = float(f["/measurement/instrument/detector/pixel_size_x"][()])
    proj = minus_log(normalize(data, white, dark))
    live_center = float(fly_run.centers_px["0"])
    # As the project's reconstructions pick rows: those with the most structure (the
    # middle rows, find_center's default, put it 1.8 px off with 24 projections).
    center = find_center(proj, theta, rows=structured_rows(proj))
    volume = reconstruct(proj, theta, center=live_center) / pixel  # 1/um, as the live map
    with h5py.File(fly_run.volumes, "r") as f:
        live = f["volumes"][0]
    rel = float(np.sqrt(np.mean((volume - live) ** 2) / np.mean(live**2)))
    print(f"energy 0: centre from the file {center:.2f} px, live {live_center:.2f} px; "
          f"relative RMS difference to the live volume {rel:.2e}")  # fmt: skip
    assert abs(center - live_center) < 0.5
    assert rel < 1e-2


def test_tiff_export_of_the_xanes_maps_keeps_the_pixel_size(fly_run, tmp_path):
    """Issue 12: the session's stored XANES map run as ImageJ TIFFs, (z, y, x) for 3D."""
    import tifffile

    from multiscope.export import export_run

    session = fly_run.session
    assert session.drain(300)
    maps = [
        session.catalog.run(r.uid)
        for r in session.catalog.runs(limit=50)
        if r.plan_name == "xanes_map"
    ]
    (derived,) = [m for m in maps if m.metadata["start"]["derived_from"] == fly_run.uid]
    written = export_run(derived, tmp_path, format="tiff")
    names = {p.name for p in written}
    assert {"whiteline_eV.tif", "edge_eV.tif", "mask.tif"} <= names
    assert "shifts_px.tif" not in names  # a table stays in maps.h5
    with h5py.File(derived.metadata["start"]["results"]["maps"], "r") as f:
        whiteline = f["whiteline_eV"][()]
    with tifffile.TiffFile(tmp_path / "whiteline_eV.tif") as tif:
        np.testing.assert_array_equal(tif.asarray(), whiteline)
        assert tif.series[0].axes == "ZYX" and whiteline.shape == (128, 128, 128)
        x_res = tif.pages[0].tags["XResolution"].value
        assert x_res[0] / x_res[1] == pytest.approx(1 / fly_run.pixel_um, rel=1e-5)
        assert tif.imagej_metadata["spacing"] == pytest.approx(fly_run.pixel_um)
