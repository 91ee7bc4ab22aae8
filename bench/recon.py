"""Reconstruction benchmark: multiscope gridrec and fbp vs scikit-image iradon and ASTRA.

Usage::

    python bench/recon.py [--quick] [--astra-path DIR] [--no-write]

Simulates a noisy parallel-beam scan of a sphere phantom (1024-pixel detector,
1601 projections over 180 deg, 16 rows, rotation axis 6 px off the detector
centre), reconstructs one slice and a 16-slice batch with each method, and
prints time, speed-up and RMSE against the phantom (inside the circle of
radius 0.45 n). ``iradon`` and ASTRA run on one slice only (they are slow).
ASTRA is optional: install ``astra-toolbox`` (e.g. ``pip install --target DIR
astra-toolbox``) and pass ``--astra-path DIR`` if it is not importable.
The table is written to ``docs/benchmarks.md`` (section
``## Reconstruction (bench/recon.py)``) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from _report import write_section as replace_section
from skimage.transform import iradon

from multiscope.analysis.tomo import find_center, minus_log, normalize, reconstruct

HEADING = "## Reconstruction (bench/recon.py)"
OFFSET = 6  # rotation axis offset from the detector centre, px (integer: iradon gets exact data)


def simulate(n, n_angles, n_rows, seed=0, i0=2e4):
    """Spheres in a cylinder: exact line integrals -> Poisson counts -> line integrals."""
    rng = np.random.default_rng(seed)
    radius_cyl, mu_matrix = 0.4 * n, 0.004
    spheres = []
    while len(spheres) < 60:
        rad = rng.uniform(0.01, 0.05) * n
        r, c = rng.uniform(-radius_cyl, radius_cyl, 2)
        z = rng.uniform(-rad / 2, n_rows - 1 + rad / 2)
        if np.hypot(r, c) > radius_cyl - rad - 1:
            continue
        if any(np.linalg.norm([z - s[0], r - s[1], c - s[2]]) < rad + s[3] + 1 for s in spheres):
            continue
        spheres.append((z, r, c, rad, rng.uniform(0.008, 0.02)))

    half = n // 2
    yy, xx = np.ogrid[-half : n - half, -half : n - half]
    phantom = np.zeros((n_rows, n, n), np.float32)
    phantom[:, yy**2 + xx**2 <= radius_cyl**2] = mu_matrix
    for z0, r, c, rad, mu in spheres:
        for z in range(n_rows):
            rho2 = rad**2 - (z - z0) ** 2
            if rho2 > 0:
                phantom[z][(yy - r) ** 2 + (xx - c) ** 2 <= rho2] = mu

    theta = np.linspace(0, np.pi, n_angles)
    center = half + OFFSET
    s = (np.arange(n) - center).astype(np.float32)
    lines = np.zeros((n_angles, n_rows, n), np.float32)
    lines += 2 * mu_matrix * np.sqrt(np.clip(radius_cyl**2 - s**2, 0, None))
    cos, sin = np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)
    for z0, r, c, rad, mu in spheres:
        d2 = (s[None, :] - (c * cos - r * sin)[:, None]) ** 2
        for z in range(n_rows):
            rho2 = rad**2 - (z - z0) ** 2
            if rho2 > 0:
                lines[:, z] += 2 * (mu - mu_matrix) * np.sqrt(np.clip(rho2 - d2, 0, None))

    beam = i0 * (1 + 0.05 * np.sin(np.arange(n) / 37.0)) * np.ones((n_rows, 1))
    counts = rng.poisson(beam * np.exp(-lines) + 100.0).astype(np.uint16)
    flats = rng.poisson(np.broadcast_to(beam + 100.0, (10, n_rows, n))).astype(np.uint16)
    darks = rng.poisson(np.full((10, n_rows, n), 100.0)).astype(np.uint16)
    return phantom, theta, center, minus_log(normalize(counts, flats, darks))


def rmse(rec, phantom):
    n = phantom.shape[-1]
    half = n // 2
    yy, xx = np.ogrid[-half : n - half, -half : n - half]
    inside = yy**2 + xx**2 <= (0.45 * n) ** 2
    return float(np.sqrt(np.mean((rec[:, inside] - phantom[:, inside]) ** 2)))


def timed(fn, repeat=1):
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def centred(lines, center):
    """Integer-shift the sinogram so the axis is at column n // 2 (iradon's centre)."""
    n = lines.shape[-1]
    shift = int(round(center)) - n // 2
    out = np.zeros_like(lines)
    if shift >= 0:
        out[..., : n - shift] = lines[..., shift:]
    else:
        out[..., -shift:] = lines[..., :shift]
    return out


def run_iradon(lines, theta, center):
    sino = centred(lines, center)
    deg = np.rad2deg(theta)
    return np.stack(
        [iradon(sino[:, z].T, deg, filter_name="shepp-logan") for z in range(lines.shape[1])]
    )


def run_astra(astra, lines, theta, center):
    """ASTRA CPU FBP. Odd detector/volume sizes put ASTRA's centre on a pixel centre."""
    sino = centred(lines, center)
    n = lines.shape[-1]
    sino = np.pad(sino, ((0, 0), (0, 0), (0, 1)))
    vol_geom = astra.create_vol_geom(n + 1, n + 1)
    proj_geom = astra.create_proj_geom("parallel", 1.0, n + 1, theta)
    projector = astra.create_projector("linear", proj_geom, vol_geom)
    out = []
    for z in range(lines.shape[1]):
        sino_id = astra.data2d.create("-sino", proj_geom, np.ascontiguousarray(sino[:, z]))
        rec_id = astra.data2d.create("-vol", vol_geom)
        cfg = astra.astra_dict("FBP")
        cfg.update(ReconstructionDataId=rec_id, ProjectionDataId=sino_id, ProjectorId=projector)
        cfg["option"] = {"FilterType": "shepp-logan"}
        alg = astra.algorithm.create(cfg)
        astra.algorithm.run(alg)
        out.append(astra.data2d.get(rec_id)[:n, :n])
        astra.algorithm.delete(alg)
        astra.data2d.delete([sino_id, rec_id])
    astra.projector.delete(projector)
    return np.stack(out)


def import_astra(path):
    if path:
        sys.path.append(path)  # appended: keep this environment's numpy first
    try:
        import astra  # noqa: PLC0415
    except ImportError as exc:
        print(f"ASTRA skipped: cannot import astra ({exc}); pip install astra-toolbox to add it")
        return None
    return astra


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="512 px, 801 angles, 8 slices")
    parser.add_argument("--astra-path", help="directory holding the astra package (optional)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)
    n, n_angles, n_batch = (512, 801, 8) if args.quick else (1024, 1601, 16)
    threads = os.cpu_count()
    load_start = os.getloadavg()[0]

    t0 = time.perf_counter()
    phantom, theta, center, lines = simulate(n, n_angles, n_batch)
    print(f"simulated {n_angles} x {n_batch} x {n} projections in {time.perf_counter() - t0:.1f} s")
    one = slice(n_batch // 2, n_batch // 2 + 1)

    def ours(algorithm, rows):
        # circle=True: the inscribed circle only, as iradon's default.
        return reconstruct(
            lines[:, rows], theta, center, algorithm, num_threads=threads, circle=True
        )

    reconstruct(lines[:, :2, :64], theta, 32, "fbp")  # numba JIT compile, not timed
    rows = []  # (method, slices, seconds, rmse)
    t, rec = timed(lambda: ours("gridrec", one), repeat=3)
    rows.append(("multiscope gridrec", 1, t, rmse(rec, phantom[one])))
    t, rec = timed(lambda: ours("gridrec", slice(None)), repeat=2)
    rows.append(("multiscope gridrec", n_batch, t, rmse(rec, phantom)))
    t, rec = timed(lambda: ours("fbp", one), repeat=2)
    rows.append(("multiscope fbp (numba)", 1, t, rmse(rec, phantom[one])))
    t, rec = timed(lambda: ours("fbp", slice(None)))
    rows.append(("multiscope fbp (numba)", n_batch, t, rmse(rec, phantom)))
    t, rec = timed(lambda: run_iradon(lines[:, one], theta, center))
    rows.append(("scikit-image iradon", 1, t, rmse(rec, phantom[one])))
    t_iradon = t
    t_astra = None
    astra = import_astra(args.astra_path)
    if astra is not None:
        t, rec = timed(lambda: run_astra(astra, lines[:, one], theta, center))
        rows.append((f"ASTRA {astra.__version__} CPU FBP", 1, t, rmse(rec, phantom[one])))
        t_astra = t

    t, found = timed(lambda: find_center(lines, theta, num_threads=threads))
    center_note = f"find_center: error {found - center:+.3f} px in {t:.1f} s."
    print(center_note)
    load = os.getloadavg()[0]

    cpu = f"{threads} cores, {platform.processor() or platform.machine()}"
    lines_out = [
        f"Machine: {cpu}; {n}-pixel detector, {n_angles} projections over 180 deg, "
        f"Poisson noise (2e4 counts), axis {OFFSET} px off centre; filter Shepp-Logan; "
        "RMSE against the phantom inside the circle of radius 0.45 n "
        f"(attenuation per pixel; phantom contrast 0.004-0.02). {center_note} "
        f"Shared machine: 1-min load average {load_start:.1f} at start, {load:.1f} at end "
        "(other jobs running inflate times, multi-threaded ones more).",
        "",
        "| method | slices | time (s) | s / slice | vs iradon | vs ASTRA | RMSE |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, k, t, err in rows:
        per = t / k
        vs_astra = f"{t_astra / per:.1f}x" if t_astra else "n/a"
        lines_out.append(
            f"| {name} | {k} | {t:.3f} | {per:.4f} | {t_iradon / per:.1f}x | {vs_astra} "
            f"| {err:.3e} |"
        )
    table = "\n".join(lines_out)
    print()
    print(table)
    if not args.no_write and not args.quick:
        write_section(Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md", table)


def write_section(path, table):
    """Replace (or append) this benchmark's section of docs/benchmarks.md."""
    body = (
        f"{HEADING}\n\n"
        "Command: `python bench/recon.py` (`--astra-path DIR` if ASTRA is installed "
        "outside the environment).\n\n"
        f"{table}\n\n"
        "Reading: the 1-slice rows compare like with like (same slice; the 16-slice rows "
        "average over 16 slices). gridrec grids the spectrum of fbp's linear interpolation "
        "kernel, so its RMSE equals iradon's to ~0.2 % (here slightly lower); the 1-slice "
        "time includes planning the NUFFT (~0.1 s), amortised in batches. fbp equals iradon "
        "to 1e-3 of the error. ASTRA's FBP (its own filter discretisation) is ~10 % worse "
        "here. Timings vary +-30 % with the load of the shared machine.\n"
    )
    replace_section(HEADING, body, path)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
