"""multiscope.export on stand-in runs: the DXchange layout, TIFF tags and shapes, CSV tables.

A stand-in run has what the exporters read of a catalog run (``metadata``, the stream
names, ``run[stream].read()`` as an xarray Dataset with frames ``(events, 1, rows,
cols)`` as tiled gives them). Each DXchange file is read back with h5py alone, as a
tomography tool would, and reconstructed with ``multiscope.analysis.tomo``.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import tifffile
import xarray as xr
from synthetic_tomo import DARK_LEVEL, flat_profile, project, random_spheres, truth_slice

from multiscope.analysis.tomo import minus_log, normalize, reconstruct
from multiscope.export import FORMATS, export_run

NY, NX, N_ANGLES, CENTER = 16, 64, 61, 31.5
PIXEL_UM = 0.26


class Stream:
    """A tiled event stream: its keys, an array per key (sliced as read), ``read(variables)``."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.reads = []  # the variables of each read()

    def __iter__(self):
        return iter(["time", *self.dataset.data_vars])

    def __getitem__(self, key):
        return self.dataset[key].data  # numpy, or a LazyFrames (slices read on demand)

    def read(self, variables=None):
        keys = [k for k in (variables or self.dataset.data_vars) if k != "time"]
        self.reads.append(keys)
        return xr.Dataset(
            {k: (self.dataset[k].dims, np.asarray(self.dataset[k].data)) for k in keys},
            coords={"time": self.dataset["time"].values},
        )


class FakeRun:
    """Metadata and streams as a tiled BlueskyRun gives them."""

    def __init__(self, start, streams, stop=None):
        self.metadata = {"start": start, "stop": stop or {"exit_status": "success"}}
        self.streams = streams
        self.clients = {name: Stream(ds) for name, ds in streams.items()}

    def __iter__(self):
        return iter(self.streams)

    def __getitem__(self, name):
        return self.clients[name]


def _dataset(images=None, **scalars):
    n = len(images) if images is not None else len(next(iter(scalars.values())))
    data = {k: ("time", np.asarray(v)) for k, v in scalars.items()}
    if images is not None:
        # tiled reads a file-referenced frame of shape [1, ny, nx] per event
        data["camera_image"] = (("time", "dim_0", "dim_1", "dim_2"), images[:, None])
    return xr.Dataset(data, coords={"time": 1.7e9 + np.arange(n, dtype=float)})


def _frames(rng, line_integrals, flat):
    counts = flat * np.exp(-line_integrals) + DARK_LEVEL
    return np.clip(rng.poisson(counts), 0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def phantom():
    rng = np.random.default_rng(7)
    spheres = random_spheres(rng, 4, z_range=(2, NY - 2), radius=(3.0, 5.0), lateral=22.0)
    flat = flat_profile(NY, NX, 4000.0)
    return spheres, flat


def _tomo_run(phantom, *, fly=False, rng_seed=1, plan=None):
    spheres, flat = phantom
    rng = np.random.default_rng(rng_seed)
    theta_deg = np.linspace(0.0, 180.0, N_ANGLES, endpoint=False)
    if fly:  # mid-exposure angles the IOC recorded: a little off the nominal grid
        theta_deg = theta_deg + rng.uniform(-0.2, 0.2, N_ANGLES)
    proj = np.stack([project(spheres, np.deg2rad(t), NY, NX, CENTER) for t in theta_deg])
    primary = _frames(rng, proj, flat)
    flats = _frames(rng, np.zeros((3, NY, NX)), flat)
    darks = np.clip(rng.poisson(DARK_LEVEL, (2, NY, NX)), 0, 65535).astype(np.uint16)
    plan = plan or ("fly_tomo_scan" if fly else "tomo_scan")
    tomo = {
        "num_projections": N_ANGLES, "angle_range_deg": 180.0, "start_deg": 0.0,
        "exposure_s": 0.05, "num_darks": 2, "num_flats": 3, "pixel_size_um": PIXEL_UM,
        "energy_keV": 8.0, "sample_id": "tab", "rotation": "sample_theta",
    }  # fmt: skip
    if fly:
        tomo["theta_velocity_deg_s"] = 60.0
        primary_ds = _dataset(primary, camera_theta=theta_deg)
    else:  # the rotation's readback; the frame files record no angle
        primary_ds = _dataset(primary, sample_theta=theta_deg)
    start = {"uid": "0123456789abcdef", "plan_name": plan, "sample_id": "tab", "tomo": tomo}
    streams = {
        "dark": _dataset(darks),
        "flat": _dataset(flats, sample_x=np.full(3, 500.0)),
        "primary": primary_ds,
    }
    return FakeRun(start, streams), theta_deg


def _read_dxchange(path):
    """What a tomography tool reads (h5py only): tomopy's conventions, theta in radians."""
    with h5py.File(path, "r") as f:
        data = f["/exchange/data"][()]
        white = f["/exchange/data_white"][()]
        dark = f["/exchange/data_dark"][()]
        theta = np.deg2rad(f["/exchange/theta"][()])  # DXchange stores degrees
    return data, white, dark, theta


@pytest.mark.parametrize("fly", [False, True], ids=["step", "fly"])
def test_dxchange_file_reconstructs_the_phantom(tmp_path, phantom, fly):
    run, theta_deg = _tomo_run(phantom, fly=fly)
    written = export_run(run, tmp_path, format="dxchange")
    assert [p.name for p in written] == [
        "metadata.json",
        f"{run.metadata['start']['plan_name']}_01234567.h5",
    ]
    data, white, dark, theta = _read_dxchange(written[1])
    assert data.shape == (N_ANGLES, NY, NX) and data.dtype == np.uint16
    assert white.shape == (3, NY, NX) and dark.shape == (2, NY, NX)
    np.testing.assert_allclose(theta, np.deg2rad(theta_deg))  # the recorded angles
    np.testing.assert_array_equal(data, run.streams["primary"]["camera_image"][:, 0])

    row = NY // 2
    volume = reconstruct(minus_log(normalize(data, white, dark)), theta, center=CENTER)
    truth = truth_slice(phantom[0], row, NX)
    inside = np.hypot(*np.mgrid[:NX, :NX] - NX / 2) < NX / 2 - 4
    err = volume[row][inside] - truth[inside]
    rel = np.sqrt(np.mean(err**2)) / np.sqrt(np.mean(truth[inside] ** 2))
    print(f"{'fly' if fly else 'step'}: relative RMS error of the slice {rel:.3f}")
    assert rel < 0.35
    # Angles taken as the nominal grid instead of those recorded would be off by 0.2 deg
    # at most (fly); the file keeps the recorded ones (checked above), not the grid.


def test_dxchange_layout_units_and_metadata(tmp_path, phantom):
    run, _ = _tomo_run(phantom, fly=True)
    path = export_run(run, tmp_path, format="dxchange")[1]
    with h5py.File(path, "r") as f:
        assert f["implements"][()].decode() == "exchange:measurement:process"
        assert f["/exchange/theta"].attrs["units"] == "deg"
        assert f["/exchange/theta"].attrs["source"] == "camera_theta"
        assert f["/exchange/data"].chunks == (1, NY, NX)  # one projection per chunk
        assert f["/exchange/data"].attrs["axes"] == "theta:y:x"
        det = f["/measurement/instrument/detector"]
        assert det["pixel_size_x"][()] == PIXEL_UM and det["pixel_size_x"].attrs["units"] == "um"
        assert det["exposure_time"][()] == 0.05 and det["exposure_time"].attrs["units"] == "s"
        assert (det["dimension_x"][()], det["dimension_y"][()]) == (NX, NY)
        energy = f["/measurement/instrument/monochromator/energy"]
        assert energy[()] == 8.0 and energy.attrs["units"] == "keV"
        assert f["/measurement/sample/name"][()].decode() == "tab"
        acq = f["/process/acquisition"]
        assert acq["scan_mode"][()].decode() == "fly"
        assert acq["run_uid"][()].decode() == "0123456789abcdef"
        assert json.loads(acq["start_document"][()])["tomo"]["num_projections"] == N_ANGLES
    assert not list(tmp_path.glob("*.part"))


def test_mosaic_tile_file_is_named_by_its_tile(tmp_path, phantom):
    run, _ = _tomo_run(phantom)
    run.metadata["start"]["mosaic"] = {
        "mosaic_id": "m1", "tile_index": 1, "num_tiles": 2, "z_um": 133.3,
    }  # fmt: skip
    path = export_run(run, tmp_path, format="dxchange")[1]
    assert path.name == "tomo_scan_01234567_tile01.h5"
    with h5py.File(path, "r") as f:
        assert f["/process/acquisition/tile_index"][()] == 1
        z = f["/process/acquisition/tile_z_um"]
        assert z[()] == 133.3 and z.attrs["units"] == "um"
        assert f["/process/acquisition/mosaic_id"][()].decode() == "m1"


class FakeCatalog:
    def __init__(self, runs):
        self.runs = runs

    def run(self, uid):
        return self.runs[uid]


def test_stitched_mosaic_exports_one_file_per_tile(tmp_path, phantom):
    tiles = {}
    for k in range(2):
        run, _ = _tomo_run(phantom, rng_seed=k)
        run.metadata["start"]["uid"] = f"{k}" * 16
        run.metadata["start"]["mosaic"] = {"mosaic_id": "m1", "tile_index": k, "num_tiles": 2}
        tiles[f"{k}" * 16] = run
    stitched = FakeRun(
        {"uid": "s" * 16, "plan_name": "mosaic_stitch", "derived_from": list(tiles)}, {}
    )
    with pytest.raises(ValueError, match="need the catalog"):
        export_run(stitched, tmp_path / "no", format="dxchange")
    written = export_run(stitched, tmp_path, format="dxchange", catalog=FakeCatalog(tiles))
    names = [p.name for p in written[1:]]
    assert names == ["tomo_scan_00000000_tile00.h5", "tomo_scan_11111111_tile01.h5"]


def _xanes_run(rng, *, fly):
    energies = [8.30, 8.34, 8.36]  # energy 1: as many indices from 0 as from 2, nearer 2
    n, ny, nx = 5, 8, 12
    frames = rng.integers(200, 4000, (3 * n, ny, nx)).astype(np.uint16)
    theta = np.tile(np.linspace(0, 180, n, endpoint=False), 3)
    index = np.repeat(np.arange(3), n)
    flats = rng.integers(4000, 5000, (4, ny, nx)).astype(np.uint16)
    start = {
        "uid": "abcdef0123456789", "plan_name": "xanes_3d", "sample_id": "nmc",
        "tomo": {"num_projections": n, "rotation": "sample_theta",
                 "scan_mode": "fly" if fly else "step", "pixel_size_um": 0.5},
        "xanes": {"edge": "Ni", "energies_keV": energies, "pixel_size_um": 0.5},
    }  # fmt: skip
    readback = np.asarray(energies)[index] + 1e-4
    if fly:
        primary = _dataset(frames, camera_theta=theta)
        marks = _dataset(xanes_energy_index=np.arange(3), energy_energy=readback[::n])
    else:
        primary = _dataset(
            frames, sample_theta=theta, xanes_energy_index=index, energy_energy=readback
        )
        marks = None
    streams = {
        "dark": _dataset(rng.integers(90, 110, (2, ny, nx)).astype(np.uint16)),
        # flat sets at energies 0 and 2 (a flat_every of 2): energy 1 uses the nearest
        "flat": _dataset(flats, xanes_energy_index=np.array([0, 0, 2, 2])),
        "primary": primary,
    }
    if marks is not None:
        streams["xanes_energy"] = marks
    return FakeRun(start, streams), frames, theta, flats, readback


@pytest.mark.parametrize("fly", [False, True], ids=["step", "fly"])
def test_xanes_3d_gives_one_file_per_energy(tmp_path, fly):
    run, frames, theta, flats, readback = _xanes_run(np.random.default_rng(3), fly=fly)
    written = export_run(run, tmp_path, format="dxchange")[1:]
    assert [p.name for p in written] == [f"xanes_3d_abcdef01_e{i:03d}.h5" for i in range(3)]
    for i, path in enumerate(written):
        with h5py.File(path, "r") as f:
            np.testing.assert_array_equal(f["/exchange/data"][()], frames[5 * i : 5 * i + 5])
            np.testing.assert_allclose(f["/exchange/theta"][()], theta[5 * i : 5 * i + 5])
            energy = f["/measurement/instrument/monochromator/energy"][()]
            assert energy == pytest.approx(readback[5 * i])  # the readback, not the grid
            white = f["/exchange/data_white"][()]
            assert f["/exchange/data_dark"].shape == (2, 8, 12)
            assert f["/process/acquisition/energy_index"][()] == i
        expected = flats[:2] if i == 0 else flats[2:]  # the nearest flat set in energy
        np.testing.assert_array_equal(white, expected)


def test_dxchange_of_a_run_without_tomogram_is_refused(tmp_path):
    run = FakeRun({"uid": "f" * 16, "plan_name": "count"}, {"primary": _dataset(x=[1.0, 2.0])})
    with pytest.raises(ValueError, match=r"\(count\) is not a tomography run"):
        export_run(run, tmp_path / "out", format="dxchange")
    assert not list((tmp_path / "out").iterdir())  # nothing written
    with pytest.raises(ValueError, match="unknown export format 'nexus'"):
        export_run(run, tmp_path / "out", format="nexus")


def test_tiff_of_frames_has_no_singleton_axis_and_the_pixel_size(tmp_path, phantom):
    run, _ = _tomo_run(phantom)
    written = export_run(run, tmp_path, format="tiff")
    names = sorted(p.name for p in written[1:])
    assert names == ["dark_camera_image.tif", "flat_camera_image.tif", "primary_camera_image.tif"]
    with tifffile.TiffFile(tmp_path / "primary_camera_image.tif") as tif:
        stack = tif.asarray()
        assert stack.shape == (N_ANGLES, NY, NX) and stack.dtype == np.uint16
        x_res = tif.pages[0].tags["XResolution"].value
        assert x_res[0] / x_res[1] == pytest.approx(1 / PIXEL_UM, rel=1e-6)  # px per um
        assert tif.imagej_metadata["unit"] == "um"
        assert tif.imagej_metadata["spacing"] == pytest.approx(PIXEL_UM)
    np.testing.assert_array_equal(stack, run.streams["primary"]["camera_image"][:, 0])


def test_tiff_of_a_reconstruction_is_its_volume(tmp_path):
    volume = np.random.default_rng(0).random((1, 6, 10, 10), dtype=np.float32)
    start = {
        "uid": "7" * 16, "plan_name": "tomo_reconstruction",
        "parameters": {"pixel_size_um": 0.13, "center_px": 4.5},
    }  # fmt: skip
    ds = xr.Dataset(
        {
            "volume": (("time", "a", "z", "y", "x"), volume[None]),
            "center_px": ("time", [4.5]),
        },
        coords={"time": [1.7e9]},
    )
    written = export_run(FakeRun(start, {"primary": ds}), tmp_path, format="tiff")
    assert [p.name for p in written] == ["metadata.json", "volume.tif"]
    with tifffile.TiffFile(written[1]) as tif:
        np.testing.assert_array_equal(tif.asarray(), volume[0])
        assert tif.imagej_metadata["spacing"] == pytest.approx(0.13)
        assert tif.series[0].axes == "ZYX"


def test_tiff_of_xanes_maps(tmp_path):
    rng = np.random.default_rng(1)
    maps = tmp_path / "maps.h5"
    wl = rng.normal(8350, 2, (12, 14)).astype(np.float32)
    with h5py.File(maps, "w") as f:
        f["whiteline_eV"] = wl
        f["edge_eV"] = wl - 10
        f["mask"] = wl > 8352
        f["shifts_px"] = np.zeros((3, 2))  # a table, not a map
        f["energies_keV"] = [8.3, 8.33, 8.36]
    start = {
        "uid": "9" * 16, "plan_name": "xanes_map",
        "xanes": {"pixel_size_um": 0.5}, "results": {"maps": str(maps)},
    }  # fmt: skip
    written = export_run(FakeRun(start, {}), tmp_path / "out", format="tiff")
    assert sorted(p.name for p in written[1:]) == ["edge_eV.tif", "mask.tif", "whiteline_eV.tif"]
    with tifffile.TiffFile(tmp_path / "out" / "whiteline_eV.tif") as tif:
        np.testing.assert_array_equal(tif.asarray(), wl)
        x_res = tif.pages[0].tags["YResolution"].value
        assert x_res[0] / x_res[1] == pytest.approx(2.0)
        assert tif.imagej_metadata["unit"] == "um"


def test_tiff_of_a_run_without_images_is_refused(tmp_path):
    run = FakeRun({"uid": "f" * 16, "plan_name": "count"}, {"primary": _dataset(x=[1.0, 2.0])})
    with pytest.raises(ValueError, match="no images"):
        export_run(run, tmp_path, format="tiff")


def test_csv_is_one_table_per_stream_of_scalars(tmp_path, phantom):
    import pandas as pd

    run, theta_deg = _tomo_run(phantom)
    written = export_run(run, tmp_path, format="csv")
    assert sorted(p.name for p in written[1:]) == ["dark.csv", "flat.csv", "primary.csv"]
    primary = pd.read_csv(tmp_path / "primary.csv")
    assert list(primary.columns) == ["time", "sample_theta"]  # no frames
    np.testing.assert_allclose(primary["sample_theta"], theta_deg)
    assert len(pd.read_csv(tmp_path / "dark.csv")) == 2  # frames only: the times
    assert json.loads((tmp_path / "metadata.json").read_text())["start"]["plan_name"]


def test_raw_default_keeps_tables_and_writes_frames_without_the_singleton_axis(tmp_path, phantom):
    run, _ = _tomo_run(phantom)
    written = export_run(run, tmp_path)
    assert {p.name for p in written} >= {"metadata.json", "primary.csv", "primary.h5"}
    with h5py.File(tmp_path / "primary.h5", "r") as f:
        assert f["camera_image"].shape == (N_ANGLES, NY, NX)


def test_cli_formats_are_the_exporters():
    from multiscope.cli import EXPORT_FORMATS, build_parser

    assert EXPORT_FORMATS == FORMATS
    args = build_parser().parse_args(["export", "-1", "--format", "dxchange"])
    assert args.format == "dxchange" and args.out is None
    assert build_parser().parse_args(["export", "-1"]).format == "raw"


class LazyFrames:
    """A long stream's frames made on demand, as tiled's array client fetches a slice."""

    def __init__(self, n, rows, cols):
        self.shape = (n, 1, rows, cols)
        self.dtype = np.dtype(np.uint16)
        self.largest = 0  # the most frames one read asked for

    def frame(self, i):
        return np.full(self.shape[2:], i % 65536, np.uint16)

    def __getitem__(self, at):
        at = at if isinstance(at, tuple) else (at,)
        events = range(self.shape[0])[at[0]]
        events = [events] if isinstance(events, int) else events
        self.largest = max(self.largest, len(events))
        block = np.empty((len(events), 1, *self.shape[2:]), self.dtype)
        for row, i in enumerate(events):
            block[row] = i % 65536
        return block[(slice(None), *at[1:])] if isinstance(at[0], slice) else block[0][at[1:]]

    def __array__(self, dtype=None, copy=None):  # what reading the stream whole does
        return self[:]


class LazyStream:
    def __init__(self, arrays):
        self.arrays = arrays

    def __iter__(self):
        return iter(["time", *self.arrays])

    def __getitem__(self, key):
        return self.arrays[key]

    def read(self, variables=None):
        keys = [k for k in (variables or self.arrays) if k != "time"]
        data = {}
        for k in keys:
            value = np.asarray(self.arrays[k])
            data[k] = (("time", *(f"{k}_{d}" for d in range(1, value.ndim))), value)
        return xr.Dataset(data, coords={"time": self.arrays["time"]})


def _long_run(n, rows, cols):
    theta = np.linspace(0.0, 180.0, n, endpoint=False)
    frames = LazyFrames(n, rows, cols)
    start = {"uid": "abcd" * 4, "plan_name": "tomo_scan", "tomo": {"rotation": "sample_theta"}}
    primary = {"time": np.arange(n, dtype=float), "sample_theta": theta, "camera_image": frames}
    flat = {"time": np.arange(3.0), "sample_theta": np.full(3, 180.0),
            "camera_image": LazyFrames(3, rows, cols)}  # fmt: skip
    run = FakeRun(start, {})
    run.streams = {"flat": None, "primary": None}
    run.clients = {"flat": LazyStream(flat), "primary": LazyStream(primary)}
    return run, frames


@pytest.mark.parametrize("fmt", ["dxchange", "tiff", "raw"])
def test_export_memory_is_bounded_by_a_chunk_not_by_the_stream(tmp_path, fmt):
    """Issue 12: a stream was read whole. 800 frames of 128 x 128 (25 MiB) exported with
    1 MiB chunks: Python's peak allocation (tracemalloc: numpy's buffers included)
    stays a few chunks (measured 2-3 MiB), and no read asks for more frames than a
    chunk holds. Reading the stream whole peaked above the stream's size."""
    import tracemalloc

    n, rows, cols = 800, 128, 128
    chunk = 2**20
    stream_bytes = n * rows * cols * 2
    # First exports import modules lazily (MBs of code): warm up on a short run.
    export_run(_long_run(8, rows, cols)[0], tmp_path / "warm-up", format=fmt, max_bytes=chunk)
    run, frames = _long_run(n, rows, cols)
    tracemalloc.start()
    try:
        written = export_run(run, tmp_path, format=fmt, max_bytes=chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"{fmt}: peak {peak / 2**20:.1f} MiB for a {stream_bytes / 2**20:.1f} MiB stream")
    assert peak < 6 * chunk < stream_bytes / 4
    assert frames.largest == chunk // (rows * cols * 2)  # 32 frames a read, never more
    if fmt == "dxchange":
        with h5py.File(written[1], "r") as f:
            data = f["/exchange/data"]
            assert data.shape == (n, rows, cols)
            for i in (0, 31, 32, 799):  # across the chunks' seams
                np.testing.assert_array_equal(data[i], frames.frame(i))
            np.testing.assert_allclose(f["/exchange/theta_white"][()], [180.0] * 3)
    elif fmt == "tiff":
        stack = tifffile.imread(tmp_path / "primary_camera_image.tif")
        assert stack.shape == (n, rows, cols)
        np.testing.assert_array_equal(stack[[0, 32, 799], 0, 0], [0, 32, 799])
    else:
        with h5py.File(tmp_path / "primary.h5", "r") as f:
            np.testing.assert_array_equal(f["camera_image"][[0, 32, 799], 0, 0], [0, 32, 799])


def test_frames_chunks_follow_the_selection_and_the_events():
    from multiscope.export._runs import Frames

    source = np.arange(5 * 2 * 3 * 4, dtype=np.uint16).reshape(5, 2, 3, 4)  # 2 frames an event
    frames = Frames(source)
    flat = source.reshape(-1, 3, 4)
    assert frames.shape == (10, 3, 4)
    one = 3 * 4 * 2
    blocks = list(frames.chunks(3 * one))  # 3 frames a chunk: events split in the middle
    assert [len(b) for _, b in blocks] == [3, 3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), flat)
    chosen = frames.select(np.array([1, 2, 3, 7, 8]))  # two runs of consecutive frames
    np.testing.assert_array_equal(chosen.read(), flat[[1, 2, 3, 7, 8]])
    assert [p for p, _ in chosen.chunks(2 * one)] == [0, 2, 3]
    volume = Frames(np.arange(10, dtype=np.float32).reshape(1, 1, 5, 2, 1))  # its z slices
    np.testing.assert_array_equal(volume.read(), np.arange(10).reshape(5, 2, 1))
    assert [len(b) for _, b in volume.chunks(2 * 2 * 4)] == [2, 2, 1]  # inside the one event


def test_theta_white_and_theta_dark_are_the_angles_of_the_flats_and_darks(tmp_path, phantom):
    """DXchange's /exchange/theta_white and theta_dark: the rotation read with each flat
    and dark frame (degrees), written when the run recorded it, else left out."""
    run, _ = _tomo_run(phantom)
    path = export_run(run, tmp_path / "before", format="dxchange")[1]
    with h5py.File(path, "r") as f:  # the flat and dark streams read no rotation
        assert "theta_white" not in f["/exchange"] and "theta_dark" not in f["/exchange"]
    flats, darks = run.streams["flat"], run.streams["dark"]
    run, _ = _tomo_run(phantom)
    run.streams["flat"] = flats.assign(sample_theta=("time", [0.0, 0.0, 179.5]))
    run.streams["dark"] = darks.assign(sample_theta=("time", [0.0, 179.5]))
    run.clients = {name: Stream(ds) for name, ds in run.streams.items()}
    path = export_run(run, tmp_path / "after", format="dxchange")[1]
    with h5py.File(path, "r") as f:
        white, dark = f["/exchange/theta_white"], f["/exchange/theta_dark"]
        np.testing.assert_array_equal(white[()], [0.0, 0.0, 179.5])
        np.testing.assert_array_equal(dark[()], [0.0, 179.5])
        assert white.attrs["units"] == "deg" and dark.attrs["units"] == "deg"
        assert len(white) == len(f["/exchange/data_white"])
        assert len(dark) == len(f["/exchange/data_dark"])


def test_xanes_3d_theta_white_follows_the_flat_sets_of_each_energy(tmp_path):
    run, *_ = _xanes_run(np.random.default_rng(3), fly=True)
    flat = run.streams["flat"].assign(sample_theta=("time", [0.0, 0.0, 144.0, 144.0]))
    run.streams["flat"] = flat
    run.clients["flat"] = Stream(flat)
    written = export_run(run, tmp_path, format="dxchange")[1:]
    got = []
    for path in written:
        with h5py.File(path, "r") as f:
            got.append(f["/exchange/theta_white"][()].tolist())
    assert got == [[0.0, 0.0], [144.0, 144.0], [144.0, 144.0]]  # energy 1: the nearer set (2)
