"""Lab XRM benchmark: the simulator's projections, and the scout's cost and accuracy.

Usage::

    python bench/xrm.py [--no-write]

1. One 256 x 256 projection of the coin cell with its internal short
   (``sim_devices.physics.xrm_scene``: chords of analytic solids) beside the anchor,
   the same phantom voxelised once at the projection's pixel (256^3 float32) and, per
   angle, rotated (``scipy.ndimage.rotate``, linear) and summed along the beam.
2. A survey as ``scout_and_zoom`` takes it at binning 8 (109 um pixels, the whole
   20 mm cell in the field): 121 noisy projections with flats and darks, normalised and
   reconstructed with ``multiscope.analysis.tomo`` (gridrec), then the automatic scout
   (``multiscope.analysis.xrm_scout.rotational_anomaly``): seconds per step, and the
   distance from the volume of interest found to the short's true centre, over 20
   noise realisations.

Writes the section ``## Lab XRM (bench/xrm.py)`` of ``docs/benchmarks.md`` unless
``--no-write``; nothing is asserted.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _report import write_section  # noqa: E402

from multiscope.analysis.tomo import find_center, minus_log, normalize, reconstruct  # noqa: E402
from multiscope.analysis.xrm_scout import rotational_anomaly, voxel_to_sample_mm  # noqa: E402
from sim_devices.physics.xrm_scene import XRMScene, XRMState, make_phantom  # noqa: E402

HEADING = "## Lab XRM (bench/xrm.py)"
SHAPE = (256, 256)
SURVEY = XRMState(binning=8)  # the coin survey's geometry at binning 8
N_PROJECTIONS = 121
SEEDS = tuple(range(20))  # noise realisations of the survey
EXPOSURE_S = 1.0


def _timed(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _voxelised(scene: XRMScene, state: XRMState) -> np.ndarray:
    """The phantom's attenuation (per voxel, dimensionless) on the projection's grid."""
    from sim_devices.physics.xrm_scene import mu_per_mm

    n = SHAPE[1]
    pixel = state.pixel_mm
    axis = (np.arange(n) - (n - 1) / 2.0) * pixel
    z = ((SHAPE[0] - 1) / 2.0 - np.arange(SHAPE[0])) * pixel
    zz, yy, xx = np.meshgrid(z, axis, axis, indexing="ij")
    energy = state.energy_keV
    volume = np.zeros(zz.shape, np.float32)
    for solid in scene.phantom.solids:  # painted in order, as the labels: a later one wins
        volume[solid.contains(xx, yy, zz)] = mu_per_mm(solid.material, energy) * pixel
    return volume


def projections(scene: XRMScene) -> dict:
    state = SURVEY
    analytic_s, _ = _timed(lambda: scene.line_integrals(state, SHAPE), 20)
    t0 = time.perf_counter()
    volume = _voxelised(scene, state)
    voxelise_s = time.perf_counter() - t0
    from scipy import ndimage

    def rotated_sum():
        return ndimage.rotate(volume, 37.0, axes=(1, 2), reshape=False, order=1).sum(axis=1)

    anchor_s, _ = _timed(rotated_sum, 3)
    return {"analytic_s": analytic_s, "anchor_s": anchor_s, "voxelise_s": voxelise_s}


def survey(scene: XRMScene, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    angles_deg = np.linspace(0.0, 180.0, N_PROJECTIONS, endpoint=False)
    t0 = time.perf_counter()
    frames = np.stack([
        scene.render(XRMState(binning=8, theta_deg=float(a)), EXPOSURE_S, SHAPE, rng)[0]
        for a in angles_deg
    ])  # fmt: skip
    out = XRMState(binning=8, sample_mm=(60.0, 0.0, 0.0))
    flats = np.stack([scene.render(out, EXPOSURE_S, SHAPE, rng)[0] for _ in range(5)])
    dark_state = XRMState(binning=8, shutter_open=False)
    darks = np.stack([scene.render(dark_state, EXPOSURE_S, SHAPE, rng)[0] for _ in range(5)])
    render_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    line_integrals = minus_log(normalize(frames, flats, darks))
    angles = np.deg2rad(angles_deg)
    center = float(find_center(line_integrals, angles))
    volume = reconstruct(line_integrals, angles, center=center)
    reconstruct_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    anomaly = rotational_anomaly(volume)
    scout_s = time.perf_counter() - t0
    found = voxel_to_sample_mm(anomaly.index, volume.shape, SURVEY.pixel_mm * 1e3, (0, 0, 0))
    truth = scene.phantom.defect_center_mm
    return {"render_s": render_s, "reconstruct_s": reconstruct_s, "scout_s": scout_s,
            "error_mm": math.dist(found, truth), "score": anomaly.score,
            "pixel_um": SURVEY.pixel_mm * 1e3, "shape": volume.shape}  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    scene = XRMScene(make_phantom("coin_short"))
    p = projections(scene)
    s = survey(scene)
    errors = [s["error_mm"]] + [survey(scene, seed)["error_mm"] for seed in SEEDS[1:]]
    cores = os.cpu_count()
    body = "\n".join([
        HEADING,
        "",
        f"`python bench/xrm.py` on {cores} cores, one run (medians where repeated).",
        "",
        "| one 256 x 256 projection of the coin cell | seconds | ratio |",
        "|---|---|---|",
        f"| analytic chords (the simulator) | {p['analytic_s']:.4f} | 1 |",
        f"| anchor: 256^3 voxels rotated and summed | {p['anchor_s']:.3f} | "
        f"{p['anchor_s'] / p['analytic_s']:.0f} |",
        f"| (anchor's one-off voxelisation) | {p['voxelise_s']:.2f} | |",
        "",
        f"Survey ({N_PROJECTIONS} projections, {s['pixel_um']:.1f} um pixels, volume "
        f"{s['shape']}): render {s['render_s']:.1f} s, normalise + centre + gridrec "
        f"{s['reconstruct_s']:.1f} s, automatic scout {s['scout_s']:.2f} s; volume of "
        f"interest {s['error_mm']:.2f} mm from the short's true centre (score "
        f"{s['score']:.1f}; one survey voxel is {s['pixel_um'] / 1e3:.2f} mm). Over "
        f"{len(SEEDS)} noise realisations: median {statistics.median(errors):.2f} mm, "
        f"max {max(errors):.2f} mm ({', '.join(f'{e:.2f}' for e in errors)}).",
        "",
    ])  # fmt: skip
    print(body)
    if not args.no_write:
        print(f"wrote {write_section(HEADING, body)}")


if __name__ == "__main__":
    main()
