"""Ground truth of the simulated laser mill: where a path's kerf must remove material.

The laser IOC (:mod:`sim_devices.laser`) removes every pixel of its material map
whose centre lies within half a kerf of the path (an exact point-to-segment
distance). This module computes the same region another way, from a distance
transform of the path drawn densely on the grid, so that a test compares two
independent rasterisations: within ``radius - tolerance`` of the path everything
must be gone; beyond ``radius + tolerance`` nothing may be.

Run::

    python -m sim_devices.laser_truth --map STATE.json.map.npz --path X0 Y0 X1 Y1 ...
        --kerf-um 20   # prints the pixels removed outside, and left inside, the kerf
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage

from sim_devices.physics.laser_sheet import SheetMap

__all__ = ["distance_to_path_um", "kerf_mismatch", "load_map", "main"]


def load_map(path) -> SheetMap:
    """The IOC's material map file (``map:file_RBV``)."""
    return SheetMap.load(path)


def distance_to_path_um(x_um, y_um, shape: tuple[int, int], pixel_um: float) -> np.ndarray:
    """Distance (um) from every pixel centre to the polyline, by a distance transform.

    The path is drawn as the pixels its points fall in, sampled every quarter pixel;
    the distance to it is then accurate to about a pixel.
    """
    x, y = np.asarray(x_um, dtype=float), np.asarray(y_um, dtype=float)
    line = np.zeros(shape, dtype=bool)
    for k in range(len(x) - 1):
        n = max(int(np.hypot(x[k + 1] - x[k], y[k + 1] - y[k]) / (pixel_um / 4.0)), 1) + 1
        xs, ys = np.linspace(x[k], x[k + 1], n), np.linspace(y[k], y[k + 1], n)
        cols, rows = np.floor(xs / pixel_um).astype(int), np.floor(ys / pixel_um).astype(int)
        keep = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
        line[rows[keep], cols[keep]] = True
    return ndimage.distance_transform_edt(~line) * pixel_um


def kerf_mismatch(
    removed: np.ndarray, paths, kerf_um: float, pixel_um: float, tolerance_um: float
) -> tuple[int, int]:
    """Pixels removed beyond the kerfs, and pixels left inside them, for complete cuts.

    Parameters
    ----------
    removed : ndarray of bool
        True where the map lost its material.
    paths : sequence of (x_um, y_um)
        The paths' vertices (of the parts cut).
    kerf_um, pixel_um, tolerance_um : float
        ``tolerance_um`` is the band around the kerf's edge where either is allowed.
    """
    distance = np.full(removed.shape, np.inf)
    for x_um, y_um in paths:
        distance = np.minimum(distance, distance_to_path_um(x_um, y_um, removed.shape, pixel_um))
    radius = kerf_um / 2.0
    outside = int(np.count_nonzero(removed & (distance > radius + tolerance_um)))
    left = int(np.count_nonzero(~removed & (distance < radius - tolerance_um)))
    return outside, left


def main(argv=None) -> None:
    """Compare a saved map with a path's kerf; print the mismatches."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--map", required=True)
    parser.add_argument("--path", type=float, nargs="+", required=True, help="x0 y0 x1 y1 ...")
    parser.add_argument("--kerf-um", type=float, default=20.0)
    parser.add_argument("--tolerance-um", type=float, default=2.0)
    args = parser.parse_args(argv)
    sheet = load_map(args.map)
    x, y = np.asarray(args.path[0::2]), np.asarray(args.path[1::2])
    outside, left = kerf_mismatch(~sheet.material, [(x, y)], args.kerf_um, sheet.pixel_um,
                                  args.tolerance_um)  # fmt: skip
    print(f"removed beyond the kerf: {outside} px; left inside it: {left} px")


if __name__ == "__main__":
    main()
