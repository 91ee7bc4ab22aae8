"""Demo of the TXM: vertical mosaic tomography of the simulated NMC811 tab, scored.

Reads the chain's tab from the catalog (:func:`~multiscope.demos.chain.chain_tab`:
the width the laser mill measured when ``prep`` cut it in this data directory, else
the simulator's default 80 um tab), starts the simulated TXM IOC building that tab
(or reuses a running one started with the same options), configures a ``txm``
session, runs ``vertical_mosaic_tomo`` (a step tomogram per tile, with dark and
flat fields) while the session's
:class:`~multiscope.callbacks.pipelines.TomographyPipeline` previews,
reconstructs each tile, stitches the mosaic and labels its particles, then reads
every derived run back from the catalog and scores it against the ground truth,
which ``python -m sim_devices.tomo_truth`` computes in a subprocess from the
same seeded phantom (runtime code never imports the simulator); the tab imaged
(cut on record or default) is printed and listed with the scores::

    centre error per tile (px)              |found - true axis column|   < 0.5
    reconstruction RMSE vs the phantom      <= 1.005 x iradon's on the same data
    stitch offset errors (voxels)           |measured - true| < 0.5 (z and lateral)
    particle count, mean diameter           within 5 % of the phantom's

Particles are scored where they can be measured: entirely inside the cylinder
every projection sees, 8 voxels clear of its edge (the truncation rim of local
tomography) and 2 voxels clear of the mosaic's first and last rows; measured
particles (centroid, equivalent radius) and true spheres (centre, radius) are
held to the same criterion. No size cut is needed at 0.26 um: the smallest NMC811
particle (1 um) spans 3.8 voxels, above the stitcher's ``min_size`` of 20 voxels
(3.4 voxels equivalent diameter) and FBP's ~2-voxel resolution; the cut is
printed anyway.

Defaults: binning 4 and 256 x 256 frames. That is the whole sensor at 0.26 um
pixels, so the field of view is the full 66.6 um (as at binning 2) with 4x
fewer pixels per frame and 8x fewer voxels per tile than binning 2: rendering,
reconstruction and labelling stay within a 5-minute demo on 2 cores, and the
smallest particle is still resolved. Three tiles of 181 projections (~1000
photons per pixel, 50 ms) with 10 % overlap cover 186 um of the 250 um tab.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import simctl
from ..analysis.tomo import minus_log, normalize
from ..plans.mosaic import mosaic_heights
from ..session import configure_session
from . import CHAIN_SAMPLE_ID, DemoResult
from ._txm_ioc import txm_ioc
from .chain import ChainTab, chain_tab_in

__all__ = ["TOLERANCES", "TomoDemoConfig", "run"]

TOLERANCES = {
    "center_px": 0.5,
    "rmse_ratio": 1.005,  # "no worse than iradon", up to gridrec's NUFFT accuracy
    "offset_vox": 0.5,
    "particle_fraction": 0.05,
}
# The stitcher's segmentation (callbacks/mosaic.py): smallest particle in voxels.
STITCHER_MIN_SIZE_VOX = 20
TRUTH_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class TomoDemoConfig:
    """What the demo simulates and acquires (see the module docstring for the defaults).

    The sample is not configured here: it is the chain's tab
    (:class:`~multiscope.demos.chain.ChainTab`, its seed and width). The IOC's one
    ``--seed`` also seeds its noise, flats and drift, so the demo has no seed of its own.
    """

    particles: int | None = None
    binning: int = 4
    shape: tuple[int, int] = (256, 256)
    axis_offset_px: float = 3.7
    photons: float = 20000.0
    energy_keV: float = 8.0  # noqa: N815 - unit spelling, as the plans
    num_tiles: int = 3
    overlap_fraction: float = 0.1
    num_projections: int = 181
    exposure_s: float = 0.05
    num_darks: int = 5
    num_flats: int = 5
    iradon_rows_per_tile: int = 3
    margin_px: float = 8.0
    row_margin_px: float = 2.0

    def ioc_args(self, tab: ChainTab) -> list[str]:
        """Options of ``python -m sim_devices.txm`` for this configuration imaging ``tab``."""
        args = [
            "--binning", str(self.binning),
            "--shape", str(self.shape[0]), str(self.shape[1]),
            *tab.ioc_args(),
            "--photons", repr(float(self.photons)),
            "--axis-offset-px", repr(float(self.axis_offset_px)),
        ]  # fmt: skip
        if self.particles is not None:
            args += ["--particles", str(self.particles)]
        return args


# ----------------------------------------------------------------------------- truth


def _start_truth(config: TomoDemoConfig, tab: ChainTab, heights, path: Path) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "sim_devices.tomo_truth",
        *tab.ioc_args(),
        "--binning", str(config.binning),
        "--shape", str(config.shape[0]), str(config.shape[1]),
        "--axis-offset-px", repr(float(config.axis_offset_px)),
        "--energy-keV", repr(float(config.energy_keV)),
        "--margin-px", repr(float(config.margin_px)),
        "--row-margin-px", repr(float(config.row_margin_px)),
        "--sample-z-um", *(repr(float(z)) for z in heights),
        "--out", str(path),
    ]  # fmt: skip
    if config.particles is not None:
        cmd += ["--particles", str(config.particles)]
    path.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@dataclass
class _Truth:
    attrs: dict
    sample_z_um: np.ndarray
    offsets_vox: np.ndarray
    mu_file: Path
    particles: dict[str, np.ndarray]

    def mu_rows(self, tile: int, rows) -> np.ndarray:
        import h5py

        with h5py.File(self.mu_file, "r") as f:
            return np.stack([f["tiles/mu"][tile, r] for r in rows])


def _read_truth(path: Path) -> _Truth:
    import h5py

    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != "multiscope.tomo_truth":
            raise ValueError(f"{path}: not a ground-truth file")
        return _Truth(
            attrs=dict(f.attrs),
            sample_z_um=f["tiles/sample_z_um"][()],
            offsets_vox=f["tiles/offsets_vox"][()],
            mu_file=path,
            particles={k: v[()] for k, v in f["particles"].items()},
        )


# ----------------------------------------------------------------------------- scores


def _scored_cylinder(truth: _Truth) -> np.ndarray:
    cols = int(truth.attrs["cols"])
    half = int(truth.attrs["slice_center_px"])
    radius = float(truth.attrs["seen_radius_px"]) - float(truth.attrs["margin_px"])
    yy, xx = np.ogrid[-half : cols - half, -half : cols - half]
    return yy**2 + xx**2 <= radius**2


def _iradon_slices(lines, theta, center, rows, cols):
    """scikit-image's ``iradon`` of detector rows, with the axis moved to its centre.

    ``iradon`` puts the axis at column ``len // 2``; the sinogram is zero-padded and
    shifted by the fraction of a pixel in Fourier space (exact for the sampled,
    band-limited data, where a linear shift would smooth iradon's input and its
    noise), so both reconstructions see the same data about the same centre.
    """
    from skimage.transform import iradon

    n_ang, _, n_det = lines.shape
    pad = 32
    length = n_det + 2 * pad
    whole = math.floor(center)
    # After padding the axis is at whole + pad + frac; move it to length // 2.
    roll = length // 2 - (whole + pad)
    frac = center - whole
    n_fft = 2 * length
    freq = np.fft.rfftfreq(n_fft)
    ramp = np.exp(2j * np.pi * freq * frac)  # shifts by -frac
    deg = np.rad2deg(theta)
    out = []
    for r in rows:
        sino = np.zeros((n_ang, n_fft))
        sino[:, pad : pad + n_det] = lines[:, r]
        sino = np.fft.irfft(np.fft.rfft(sino, axis=1) * ramp, n=n_fft, axis=1)[:, :length]
        sino = np.roll(sino, roll, axis=1)
        out.append(iradon(sino.T, deg, output_size=cols, filter_name="shepp-logan", circle=False))
    return np.stack(out).astype(np.float32)


def _particle_csv(path: str) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keys = rows[0].keys() if rows else ("equivalent_diameter_voxels", "centroid_z")
    return {k: np.array([float(row[k]) for row in rows]) for k in keys}


def _scored_measured(table: dict, truth: _Truth, last_row: float) -> np.ndarray:
    """Mask of measured particles entirely inside the scored region (as the truth's)."""
    half = float(truth.attrs["slice_center_px"])
    radius = float(truth.attrs["seen_radius_px"]) - float(truth.attrs["margin_px"])
    row_margin = float(truth.attrs["row_margin_px"])
    r = np.asarray(table["equivalent_diameter_voxels"]) / 2
    if r.size == 0:
        return np.zeros(0, bool)
    rho = np.hypot(table["centroid_y"] - half, table["centroid_x"] - half)
    z = table["centroid_z"]
    return (rho + r <= radius) & (z - r >= row_margin) & (z + r <= last_row - row_margin)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ----------------------------------------------------------------------------- demo


def run(
    data_dir: Path, *, config: TomoDemoConfig | None = None, port: int | None = None
) -> DemoResult:
    """Run the TXM tomography demo end to end and return its scores.

    Parameters
    ----------
    data_dir : Path
        The data directory (catalog, assets, derived files, IOC logs); the tab imaged
        is the one its catalog records the laser mill cutting (else the default tab).
    config : TomoDemoConfig, optional
        What to simulate and acquire; default :class:`TomoDemoConfig`.
    port : int, optional
        CA port for a dedicated IOC (default: reuse a matching recorded IOC or a
        free port). Tests pass one of their reserved ports.
    """
    config = config or TomoDemoConfig()
    data_dir = Path(data_dir)
    t_start = time.monotonic()
    timings: dict[str, float] = {}
    session = None
    truth_proc = None
    tab = chain_tab_in(data_dir)
    print("starting the simulated TXM IOC ...", flush=True)
    prefix, beam_prefix, iocs = txm_ioc(config.ioc_args(tab), data_dir, port, "TXMDEMO")
    try:
        session = configure_session(
            {},
            "txm",
            data_dir=data_dir,
            prefix=prefix,
            beam_prefix=beam_prefix,
            table=False,
            progress=True,
        )
        d = session.devices
        camera, sample, shutter = d["camera"], d["sample"], d["shutter"]
        for device in (camera, sample, shutter, d["objective"], d["energy"]):
            device.wait_for_connection(timeout=20)
        rows = int(camera.cam.array_size.array_size_y.get())
        cols = int(camera.cam.array_size.array_size_x.get())
        if (rows, cols) != tuple(config.shape):
            raise RuntimeError(f"the TXM IOC serves {rows} x {cols} frames, not {config.shape}")
        pixel_um = d["objective"].pixel_size.get() / 1000.0
        energy_keV = float(d["energy"].mono.position)  # noqa: N806 - unit spelling
        if abs(energy_keV - config.energy_keV) > 1e-3:
            raise RuntimeError(
                f"the TXM is at {energy_keV} keV; the demo's truth is for {config.energy_keV} keV"
            )
        # The truth is for the sample on the axis (x = y = 0).
        sample.x.set(0.0).wait(30)
        sample.y.set(0.0).wait(30)

        tile_height_um = rows * pixel_um
        # Centre the mosaic on the middle of the tab (sample:z = 0).
        span = (config.num_tiles - 1) * tile_height_um * (1 - config.overlap_fraction)
        heights = mosaic_heights(
            config.num_tiles, tile_height_um, config.overlap_fraction, -span / 2
        )
        mosaic_id = str(uuid.uuid4())
        truth_path = data_dir / "derived" / "txm" / "truth" / f"{mosaic_id}.h5"
        truth_proc = _start_truth(config, tab, heights, truth_path)  # runs while we scan
        print(
            f"vertical mosaic: {config.num_tiles} tiles x {config.num_projections} projections,"
            f" {rows} x {cols} px of {pixel_um * 1e3:.0f} nm, heights {np.round(heights, 2)} um",
            flush=True,
        )
        t0 = time.monotonic()
        old_velocity = sample.theta.velocity.get()
        sample.theta.velocity.set(180.0).wait(5)  # step scans: fast moves between angles
        try:
            uids = session.RE(
                session.plans["vertical_mosaic_tomo"](
                    camera, sample, shutter,
                    num_tiles=config.num_tiles, tile_height_um=tile_height_um,
                    overlap_fraction=config.overlap_fraction, start_z_um=float(heights[0]),
                    mosaic_id=mosaic_id, num_projections=config.num_projections,
                    exposure_s=config.exposure_s, num_darks=config.num_darks,
                    num_flats=config.num_flats, pixel_size_um=pixel_um,
                    energy_keV=config.energy_keV, sample_id=CHAIN_SAMPLE_ID,
                    md={"purpose": "multiscope demo tomo"},
                )
            )  # fmt: skip
        finally:
            sample.theta.velocity.set(old_velocity).wait(5)
        timings["acquisition"] = time.monotonic() - t0
        print(f"acquired in {timings['acquisition']:.0f} s", flush=True)
        print("waiting for the reconstructions, the stitching and the labelling ...", flush=True)
        t0 = time.monotonic()
        drained = session.drain(600)
        timings["analysis after the last tile"] = time.monotonic() - t0
        print(f"analysis done {timings['analysis after the last tile']:.0f} s later", flush=True)
        errors = list(session.pipeline.errors) if session.pipeline is not None else []

        out, _ = truth_proc.communicate(timeout=TRUTH_TIMEOUT_S)
        if truth_proc.returncode != 0:
            raise RuntimeError(f"ground truth failed:\n{out}")
        truth = _read_truth(truth_path)
        result = _score(session, config, uids, mosaic_id, truth, pixel_um)
        result.scores = {"tab imaged": f"{tab.sample_id}, {tab.source}", **result.scores}
        result.details += [
            "timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()),
            f"ground truth: {truth_path}",
        ]
        if not drained or errors:
            result.passed = False
            result.details.append(
                f"analysis incomplete: drained={drained}, errors: "
                + "; ".join(f"{e.name}: {e.exception!r}" for e in errors)
            )
        result.elapsed_s = time.monotonic() - t_start
        return result
    finally:
        if truth_proc is not None and truth_proc.poll() is None:
            truth_proc.kill()
            truth_proc.wait()
        if session is not None:
            session.close()
        for ioc in iocs:
            simctl.stop_ioc(ioc.pid)


def _score(session, config, uids, mosaic_id, truth: _Truth, pixel_um) -> DemoResult:
    """Read the raw and derived runs back from the catalog and score them."""
    from tiled.queries import Key

    catalog = session.catalog
    scores: dict[str, str] = {}
    details: list[str] = []
    passed = True
    if abs(pixel_um - float(truth.attrs["pixel_size_um"])) > 1e-6:
        raise RuntimeError(
            f"IOC pixel {pixel_um} um differs from the truth's {truth.attrs['pixel_size_um']}"
        )

    # -- raw and reconstructed tiles, in stitch order (ascending stage height) ------------
    raw_runs = {uid: catalog.run(uid) for uid in uids}
    recons = {}
    for run in catalog.search(Key("start.mosaic.mosaic_id") == mosaic_id).values():
        start = run.metadata["start"]
        if start.get("plan_name") == "tomo_reconstruction":
            recons[start["derived_from"]] = run
    missing = [u for u in uids if u not in recons]
    if missing:
        raise RuntimeError(f"no reconstruction in the catalog for runs {missing}")
    order = sorted(uids, key=lambda u: raw_runs[u].metadata["start"]["mosaic"]["z_um"])
    z_runs = np.array([raw_runs[u].metadata["start"]["mosaic"]["z_um"] for u in order])
    if not np.allclose(z_runs, truth.sample_z_um, rtol=0, atol=1e-6):
        raise RuntimeError(f"tiles at {z_runs} um, ground truth for {truth.sample_z_um} um")

    axis = float(truth.attrs["axis_column_px"])
    centers = np.array([recons[u].metadata["start"]["parameters"]["center_px"] for u in order])
    center_err = centers - axis
    ok = bool(np.all(np.abs(center_err) < TOLERANCES["center_px"]))
    passed &= ok
    scores["centre error per tile (px)"] = (
        f"{_fmt(center_err, 3)} (axis column {axis:.2f}; tolerance "
        f"{TOLERANCES['center_px']}) {_verdict(ok)}"
    )

    # -- reconstruction RMSE against the phantom, and iradon's on the same data -----------
    inside = _scored_cylinder(truth)
    n_rows = int(truth.attrs["rows"])
    cols = int(truth.attrs["cols"])
    k = config.iradon_rows_per_tile
    sample_rows = np.linspace(n_rows * 0.2, n_rows * 0.8, k).round().astype(int)
    err_rec, err_ref = [], []
    for t, uid in enumerate(order):
        raw = raw_runs[uid]
        volume = recons[uid]["primary"]["volume"]  # [1, 1, z, y, x], read slice by slice
        rec = np.stack([np.asarray(volume[0, 0, int(r)]) for r in sample_rows])
        primary = raw["primary"].read()
        frames = np.asarray(primary["camera_image"], np.float32)
        frames = frames.reshape(-1, n_rows, cols)[:, sample_rows]
        flats = np.asarray(raw["flat"].read()["camera_image"], np.float32)
        darks = np.asarray(raw["dark"].read()["camera_image"], np.float32)
        flats = flats.reshape(-1, n_rows, cols)[:, sample_rows]
        darks = darks.reshape(-1, n_rows, cols)[:, sample_rows]
        theta = np.deg2rad(np.asarray(primary["sample_theta"], float))
        lines = minus_log(normalize(frames, flats, darks))
        ref = _iradon_slices(lines, theta, centers[t], range(len(sample_rows)), cols)
        mu = truth.mu_rows(t, sample_rows)
        err_rec.append(np.mean((rec[:, inside] - mu[:, inside]) ** 2))
        err_ref.append(np.mean((ref[:, inside] - mu[:, inside]) ** 2))
    rmse_rec, rmse_ref = math.sqrt(np.mean(err_rec)), math.sqrt(np.mean(err_ref))
    ratio = rmse_rec / rmse_ref
    ok = ratio <= TOLERANCES["rmse_ratio"]
    passed &= ok
    nmc = float(np.max(mu))
    scores["reconstruction RMSE vs phantom"] = (
        f"{rmse_rec:.3e}/px, iradon {rmse_ref:.3e}/px on the same {len(order) * k} slices: "
        f"ratio {ratio:.4f} (limit {TOLERANCES['rmse_ratio']}) {_verdict(ok)}"
    )
    details.append(
        f"RMSE inside the scored cylinder, {100 * rmse_rec / nmc:.0f} % of NMC811's mu "
        f"({nmc:.2e}/px): photon noise and the truncation offset of local tomography"
    )

    # -- stitching ---------------------------------------------------------------------
    stitched = [
        run
        for run in catalog.search(Key("start.mosaic_id") == mosaic_id).values()
        if run.metadata["start"].get("plan_name") == "mosaic_stitch"
    ]
    if len(stitched) != 1:
        raise RuntimeError(f"{len(stitched)} mosaic_stitch runs for mosaic {mosaic_id}")
    start = stitched[0].metadata["start"]
    offsets = np.asarray(start["results"]["offsets_vox"], float)
    z_err = offsets[:, 0] - truth.offsets_vox
    lateral = offsets[:, 1:]
    ok = bool(
        np.all(np.abs(z_err) < TOLERANCES["offset_vox"])
        and np.all(np.abs(lateral) < TOLERANCES["offset_vox"])
    )
    passed &= ok
    scores["stitch offset errors (voxels)"] = (
        f"z {_fmt(z_err[1:], 3)} (true steps {_fmt(np.diff(truth.offsets_vox), 2)}), "
        f"lateral max {np.max(np.abs(lateral)):.3f} (tolerance {TOLERANCES['offset_vox']}) "
        f"{_verdict(ok)}"
    )

    # -- particles ---------------------------------------------------------------------
    table = _particle_csv(start["files"]["particles"])
    last_row = float(truth.attrs["mosaic_rows"]) - 1
    measured = _scored_measured(table, truth, last_row)
    size_cut = float(np.cbrt(6 * STITCHER_MIN_SIZE_VOX / np.pi))
    true_d = truth.particles["diameter_vox"][truth.particles["inside"]]
    true_d = true_d[true_d >= size_cut]
    meas_d = np.asarray(table["equivalent_diameter_voxels"])[measured]
    count, true_count = len(meas_d), len(true_d)
    count_err = count / true_count - 1 if true_count else math.inf
    mean_d = float(meas_d.mean()) if count else math.nan
    d_err = mean_d / float(true_d.mean()) - 1 if true_count else math.inf
    tol = TOLERANCES["particle_fraction"]
    ok_count, ok_d = abs(count_err) <= tol, abs(d_err) <= tol
    passed &= ok_count and ok_d
    scores["particle count vs truth"] = (
        f"{count} vs {true_count} ({100 * count_err:+.1f} %, tolerance {100 * tol:.0f} %) "
        f"{_verdict(ok_count)}"
    )
    scores["mean diameter vs truth"] = (
        f"{mean_d * pixel_um:.2f} vs {true_d.mean() * pixel_um:.2f} um "
        f"({100 * d_err:+.1f} %, tolerance {100 * tol:.0f} %) {_verdict(ok_d)}"
    )
    details += [
        f"particles scored: entirely inside the cylinder every projection sees "
        f"({float(truth.attrs['seen_radius_px']):.1f} voxels) minus "
        f"{float(truth.attrs['margin_px']):g} voxels, and "
        f"{float(truth.attrs['row_margin_px']):g} voxels inside the mosaic's rows; "
        f"size cut {size_cut:.1f} voxels ({size_cut * pixel_um:.2f} um, the stitcher's "
        f"min_size), which no true particle is below ({true_d.min() * pixel_um:.2f} um)",
        f"mosaic {mosaic_id}: raw runs {', '.join(u[:8] for u in order)}; stitched run "
        f"{start['uid'][:8]}; {len(table.get('equivalent_diameter_voxels', []))} particles "
        "labelled in all",
    ]
    return DemoResult(
        name="tomo", passed=bool(passed), elapsed_s=0.0, scores=scores, details=details
    )


def _fmt(values, digits: int) -> str:
    return "[" + ", ".join(f"{v:+.{digits}f}" for v in np.asarray(values, float)) + "]"
