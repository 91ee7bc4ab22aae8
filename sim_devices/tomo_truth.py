"""Ground truth of a simulated TXM tomogram (or vertical mosaic) in the frame of ``reconstruct``.

The TXM IOC (:mod:`sim_devices.txm`) renders projections of a seeded electrode-tab
phantom (:func:`sim_devices.physics.make_tab`, ``--seed`` and ``--tab-width-um``);
this module rebuilds the same phantom from the same arguments and samples it where
:func:`multiscope.analysis.tomo.reconstruct` puts its voxels, so a reconstruction,
a stitched mosaic or a particle table can be scored voxel by voxel.

Frame (that of ``reconstruct``; checked in ``tests/unit/test_tomo_truth_scores.py``)
-----------------------------------------------------------------------------------
A tile reconstructed from ``rows x cols`` frames is a volume ``(rows, cols, cols)``:

* axis 0 is the detector row ``r``: tab ``z = cz + ((rows - 1)/2 - r) * pixel``
  (row 0 is the *top*; z decreases with the row index);
* axis 1 (slice row ``i``) is tab ``y = cy + (i - cols // 2) * pixel``;
* axis 2 (slice column ``j``) is tab ``x = cx + (j - cols // 2) * pixel``;

where ``(cx, cy, cz)`` is the tab point on the rotation axis at the detector centre
row (:meth:`sim_devices.physics.txm_scene.TXMScene.center_um`: ``(0, 0, height/2 - sample:z)``
without drift), so slice pixel ``(cols // 2, cols // 2)`` is the rotation axis, and
the angles are the IOC's ``theta`` in radians. No axis is flipped or transposed
in the slice; only z runs against the row index. Values are ``mu`` per pixel
(``mu[1/um] * pixel_um``), the units of ``reconstruct`` and ``iradon``, sampled
at voxel centres (:meth:`sim_devices.physics.ElectrodeTab.voxelize`).

The rotation axis projects onto detector column ``(cols - 1)/2 + axis_offset_px``
(the ``center`` that :func:`~multiscope.analysis.tomo.find_center` should find).
Every projection sees the cylinder of radius ``min(u0, cols - 1 - u0)`` pixels
about the axis (``u0`` the axis column); outside it the reconstruction is local
tomography (truncated data).

Mosaics: tiles are sorted by ascending ``sample:z`` (a higher stage shows a lower
part of the tab), i.e. top to bottom, the order of
:func:`~multiscope.analysis.stitch.stitch_vertical`; tile ``t``'s row 0 is row
``offsets_vox[t] = (z_t - z_0) / pixel`` of the mosaic frame (tile 0's grid,
extended downwards).

Scored particles
----------------
The particle table lists the NMC811 particles (not CBD blobs) that intersect the
mosaic's volume. A particle counts as *inside* (scored) when the whole sphere
lies inside the cylinder every projection sees, ``margin_px`` voxels clear of
its edge, and inside the rows, ``row_margin_px`` voxels clear of the first and
last: ``rho + r <= R - margin``, ``row - r >= row_margin`` and
``row + r <= last row - row_margin`` (``R`` the seen radius, ``rho`` the
centre's distance from the axis, ``r`` the radius, all in voxels, measured
between voxel centres). Particles partly outside are not measurable (cut by the
field of view or the volume) and are left out of counts and mean diameters; so
are, for a given analysis, particles below the size it can resolve (the scores
state that cut).

The margins (defaults): 8 voxels at the cylinder's edge, the *truncation rim*
of local tomography. The tab is wider than the field of view, and FBP (which
zero-pads the truncated projections, as ``iradon`` does) reconstructs the
outermost voxels too bright: on the default tab at 0.26 um the mean excess over
the truth grows from +0.0016 /px 24 voxels inside the edge to +0.0043 /px (over
half the NMC811 contrast of 0.0077 /px) 6 voxels inside it and +0.010 /px at the
edge, so there background segments as solid and particles merge into the rim.
2 voxels at the first and last rows: slices are independent in parallel-beam
tomography; the margin covers the segmentation's pre-filter (0.7 voxel) and
one voxel of sampling.

HDF5 layout (``--out``)
-----------------------
``/`` attributes
    ``format`` (``"multiscope.tomo_truth"``), ``version`` (1), ``seed``,
    ``particles`` (-1: the default volume fill), ``tab_width_um`` (the phantom's
    width), ``binning``, ``rows``, ``cols``, ``pixel_size_um``, ``energy_keV``,
    ``axis_offset_px``, ``axis_column_px`` (``(cols - 1)/2 + axis_offset_px``),
    ``slice_center_px`` (``cols // 2``), ``seen_radius_px``, ``margin_px``,
    ``row_margin_px``, ``mosaic_rows`` (rows of the mosaic frame,
    ``offsets_vox[-1] + rows``), ``mu_units``, ``frame`` (a one-line summary).
``/tiles/sample_z_um`` (n,) float64
    Stage heights, ascending (stitch order).
``/tiles/center_um`` (n, 3) float64
    Tab point (x, y, z) on the axis at the detector centre row, um.
``/tiles/offsets_vox`` (n,) float64
    Row offset of each tile in the mosaic frame (0 for the first), voxels.
``/tiles/steps_vox`` (n - 1,) float64
    True z steps between neighbours, voxels (the offsets ``stitch_vertical``
    should measure, as differences).
``/tiles/mu`` (n, rows, cols, cols) float32, gzip
    mu per pixel of each tile (absent with ``--no-volume``).
``/particles/<column>`` (m,) one dataset per column
    ``index`` (row of :attr:`ElectrodeTab.particles`), ``diameter_um``,
    ``diameter_vox`` (sphere diameter = equivalent diameter), ``x_um``,
    ``y_um``, ``z_um`` (tab frame), ``row_vox`` (mosaic frame),
    ``slice_row_vox``, ``slice_col_vox``, ``radius_from_axis_vox``, ``inside``
    (bool, scored in the mosaic), ``inside_tile`` (m, n) bool (scored in tile
    ``t`` alone) and ``tile_row_vox`` (m, n) (``row_vox - offsets_vox[t]``).

Command line::

    python -m sim_devices.tomo_truth --seed 0 [--tab-width-um 80] --binning 4 \\
        --shape 256 256 --axis-offset-px 3.7 --energy-keV 8 --sample-z-um -60 0 60 \\
        --out truth.h5
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from sim_devices.physics import ElectrodeTab
from sim_devices.physics.materials import MATERIAL_IDS
from sim_devices.physics.phantom import DEFAULT_TAB_WIDTH_UM
from sim_devices.physics.txm_scene import (
    DEFAULT_AXIS_OFFSET_PX,
    DEFAULT_ENERGY_KEV,
    TXMScene,
    TXMState,
)
from sim_devices.truth_common import add_ioc_arguments, phantom, scene

__all__ = [
    "FORMAT",
    "PARTICLE_COLUMNS",
    "TileGeometry",
    "TomoTruth",
    "build_truth",
    "main",
    "phantom",
    "read_truth",
    "scene",
    "tile_mu",
    "write_truth",
]

FORMAT = "multiscope.tomo_truth"
VERSION = 1
DEFAULT_MARGIN_PX = 8.0
DEFAULT_ROW_MARGIN_PX = 2.0
MU_UNITS = "1/pixel: mu [1/um] * pixel_size_um, as reconstruct and iradon"
FRAME = (
    "volume (row, slice_row, slice_col) = tab (z down, y, x); slice pixel "
    "(cols//2, cols//2) on the rotation axis; angles = IOC theta in radians"
)
PARTICLE_COLUMNS = (
    "index",
    "diameter_um",
    "diameter_vox",
    "x_um",
    "y_um",
    "z_um",
    "row_vox",
    "slice_row_vox",
    "slice_col_vox",
    "radius_from_axis_vox",
    "inside",
    "inside_tile",
    "tile_row_vox",
)

_NMC = MATERIAL_IDS["nmc811"]


@dataclass(frozen=True)
class TileGeometry:
    """Where one tile's reconstruction voxels sit in the tab frame.

    Attributes
    ----------
    rows, cols : int
        Frame shape (binned).
    pixel_size_um : float
        Voxel edge, um.
    axis_column_px : float
        Detector column of the rotation axis, px.
    center_um : tuple of float
        Tab point (x, y, z) on the axis at the detector centre row, um.
    """

    rows: int
    cols: int
    pixel_size_um: float
    axis_column_px: float
    center_um: tuple[float, float, float]

    @property
    def slice_center_px(self) -> int:
        """Slice pixel (row and column index) on the rotation axis."""
        return self.cols // 2

    @property
    def seen_radius_px(self) -> float:
        """Radius (voxels) of the cylinder about the axis that every projection sees."""
        return float(min(self.axis_column_px, self.cols - 1 - self.axis_column_px))

    def region_um(self) -> tuple[float, float, float, float, float, float]:
        """``voxelize`` region whose voxel centres are exactly this tile's voxels.

        Half a voxel of slack on the far side keeps float rounding from dropping
        the last voxel (``voxelize`` fits ``floor(extent / h)`` voxels).
        """
        h = self.pixel_size_um
        cx, cy, cz = self.center_um
        half = self.slice_center_px
        x0 = cx - (half + 0.5) * h
        y0 = cy - (half + 0.5) * h
        z0 = cz - 0.5 * (self.rows - 1) * h - 0.5 * h
        return (
            x0,
            x0 + (self.cols + 0.5) * h,
            y0,
            y0 + (self.cols + 0.5) * h,
            z0,
            z0 + (self.rows + 0.5) * h,
        )


def tile_geometry(
    scene_: TXMScene,
    binning: int,
    shape: tuple[int, int],
    sample_z_um: float,
    energy_keV: float = DEFAULT_ENERGY_KEV,
) -> TileGeometry:
    """Geometry of the tile the IOC images at ``sample:z = sample_z_um`` (x = y = 0)."""
    state = TXMState(
        sample_um=(0.0, 0.0, float(sample_z_um)), energy_keV=energy_keV, binning=binning
    )
    det = scene_.geometry(state, shape)
    center = scene_.center_um(state)
    return TileGeometry(
        rows=int(det.rows),
        cols=int(det.cols),
        pixel_size_um=float(det.pixel_size_um),
        axis_column_px=float(det.u0),
        center_um=tuple(float(v) for v in center),
    )


def tile_mu(tab: ElectrodeTab, geometry: TileGeometry, energy_keV: float) -> np.ndarray:
    """mu per pixel of one tile, ``(rows, cols, cols)`` float32, in the frame of ``reconstruct``."""
    vox = tab.voxelize(geometry.pixel_size_um, geometry.region_um(), energy_keV)
    expected = (geometry.rows, geometry.cols, geometry.cols)
    if vox.mu.shape != expected:  # pragma: no cover - guards the region arithmetic
        raise RuntimeError(f"voxelised {vox.mu.shape}, expected {expected}")
    # voxelize indexes [z up, y, x]; detector rows run down.
    return np.ascontiguousarray(vox.mu[::-1] * np.float32(geometry.pixel_size_um))


@dataclass
class TomoTruth:
    """Ground truth of one tile or a vertical mosaic (see the module docstring).

    Attributes
    ----------
    attrs : dict
        The root attributes of the HDF5 file.
    sample_z_um, offsets_vox, steps_vox : ndarray
        Stage heights (ascending), tile offsets and steps in the mosaic frame.
    center_um : ndarray
        (n, 3) tab point on the axis at the centre row of each tile.
    particles : dict of str to ndarray
        The particle table (:data:`PARTICLE_COLUMNS`).
    mu : ndarray or None
        (n, rows, cols, cols) mu per pixel of every tile.
    """

    attrs: dict
    sample_z_um: np.ndarray
    offsets_vox: np.ndarray
    steps_vox: np.ndarray
    center_um: np.ndarray
    particles: dict[str, np.ndarray]
    mu: np.ndarray | None = field(default=None, repr=False)

    @property
    def axis_column_px(self) -> float:
        return float(self.attrs["axis_column_px"])

    @property
    def pixel_size_um(self) -> float:
        return float(self.attrs["pixel_size_um"])


def _particle_table(
    tab: ElectrodeTab,
    geometries: list[TileGeometry],
    offsets: np.ndarray,
    margin_px: float,
    row_margin_px: float,
) -> dict[str, np.ndarray]:
    first = geometries[0]
    h = first.pixel_size_um
    rows, half = first.rows, first.slice_center_px
    cx, cy, cz0 = first.center_um
    nmc = np.flatnonzero(tab.material_ids == _NMC)
    centers = tab.centers_um[nmc]
    r_vox = tab.radii_um[nmc] / h
    row = 0.5 * (rows - 1) - (centers[:, 2] - cz0) / h  # mosaic frame (tile 0's rows)
    slice_row = half + (centers[:, 1] - cy) / h
    slice_col = half + (centers[:, 0] - cx) / h
    rho = np.hypot(slice_row - half, slice_col - half)
    last_row = float(offsets[-1]) + rows - 1
    # Every sphere that reaches into the mosaic's box at all.
    touches = (
        (row + r_vox >= -0.5)
        & (row - r_vox <= last_row + 0.5)
        & (np.abs(slice_row - half) - r_vox <= half + 0.5)
        & (np.abs(slice_col - half) - r_vox <= half + 0.5)
    )
    seen = first.seen_radius_px - margin_px

    def inside_rows(r, radius, last):
        return (r - radius >= row_margin_px) & (r + radius <= last - row_margin_px)

    in_cylinder = rho + r_vox <= seen
    inside = in_cylinder & inside_rows(row, r_vox, last_row)
    tile_row = row[:, None] - offsets[None, :]
    inside_tile = in_cylinder[:, None] & inside_rows(tile_row, r_vox[:, None], rows - 1.0)
    table = {
        "index": nmc.astype(np.int64),
        "diameter_um": 2.0 * tab.radii_um[nmc],
        "diameter_vox": 2.0 * r_vox,
        "x_um": centers[:, 0],
        "y_um": centers[:, 1],
        "z_um": centers[:, 2],
        "row_vox": row,
        "slice_row_vox": slice_row,
        "slice_col_vox": slice_col,
        "radius_from_axis_vox": rho,
        "inside": inside,
        "inside_tile": inside_tile,
        "tile_row_vox": tile_row,
    }
    return {k: np.asarray(v)[touches] for k, v in table.items()}


def build_truth(
    seed: int,
    binning: int,
    shape: tuple[int, int],
    sample_z_um,
    *,
    particles: int | None = None,
    tab_width_um: float = DEFAULT_TAB_WIDTH_UM,
    axis_offset_px: float = DEFAULT_AXIS_OFFSET_PX,
    energy_keV: float = DEFAULT_ENERGY_KEV,
    margin_px: float = DEFAULT_MARGIN_PX,
    row_margin_px: float = DEFAULT_ROW_MARGIN_PX,
    volume: bool = True,
    tab: ElectrodeTab | None = None,
) -> TomoTruth:
    """Ground truth of the tiles the TXM IOC images at the given stage heights.

    Parameters
    ----------
    seed, particles : int
        The IOC's ``--seed`` and ``--particles`` (None: its default fill).
    tab_width_um : float
        The IOC's ``--tab-width-um``.
    binning : int
        The camera binning (1, 2, 4); the pixel size follows from the start-up optics.
    shape : tuple of int
        Binned frame shape (rows, cols).
    sample_z_um : sequence of float
        ``sample:z`` of each tile (any order; sorted ascending here).
    axis_offset_px : float
        The IOC's ``--axis-offset-px``.
    energy_keV : float
        Energy of the mu volume.
    margin_px, row_margin_px : float
        Margins of the scored region at the cylinder's edge and at the first and
        last rows (module docstring), voxels.
    volume : bool
        Also sample the mu volume of every tile.
    tab : ElectrodeTab, optional
        The phantom, when already built (it must be
        ``phantom(seed, particles, tab_width_um)``).

    Returns
    -------
    TomoTruth
    """
    z = np.sort(np.atleast_1d(np.asarray(sample_z_um, dtype=np.float64)))
    if z.size == 0:
        raise ValueError("at least one sample:z position is needed")
    rows, cols = (int(v) for v in shape)
    tab = phantom(seed, particles, tab_width_um) if tab is None else tab
    renderer = scene(tab, binning, axis_offset_px, seed)
    geometries = [tile_geometry(renderer, binning, (rows, cols), zi, energy_keV) for zi in z]
    h = geometries[0].pixel_size_um
    # A higher stage shows a lower part of the tab: rows further down the mosaic.
    offsets = np.array([(geometries[0].center_um[2] - g.center_um[2]) / h for g in geometries])
    table = _particle_table(tab, geometries, offsets, margin_px, row_margin_px)
    first = geometries[0]
    attrs = {
        "format": FORMAT,
        "version": VERSION,
        "seed": int(seed),
        "particles": -1 if particles is None else int(particles),
        "tab_width_um": float(tab.width_um),
        "binning": int(binning),
        "rows": rows,
        "cols": cols,
        "pixel_size_um": h,
        "energy_keV": float(energy_keV),
        "axis_offset_px": float(axis_offset_px),
        "axis_column_px": first.axis_column_px,
        "slice_center_px": first.slice_center_px,
        "seen_radius_px": first.seen_radius_px,
        "margin_px": float(margin_px),
        "row_margin_px": float(row_margin_px),
        "mosaic_rows": float(offsets[-1] + rows),
        "mu_units": MU_UNITS,
        "frame": FRAME,
    }
    mu = None
    if volume:
        mu = np.stack([tile_mu(tab, g, energy_keV) for g in geometries])
    return TomoTruth(
        attrs=attrs,
        sample_z_um=z,
        offsets_vox=offsets,
        steps_vox=np.diff(offsets),
        center_um=np.array([g.center_um for g in geometries]),
        particles=table,
        mu=mu,
    )


def write_truth(path: str | Path, truth: TomoTruth) -> Path:
    """Write ``truth`` to an HDF5 file (layout in the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with h5py.File(tmp, "w") as f:
        f.attrs.update(truth.attrs)
        tiles = f.create_group("tiles")
        tiles["sample_z_um"] = truth.sample_z_um
        tiles["center_um"] = truth.center_um
        tiles["offsets_vox"] = truth.offsets_vox
        tiles["steps_vox"] = truth.steps_vox
        if truth.mu is not None:
            _, rows, cols, _ = truth.mu.shape
            # Five materials only: gzip shrinks the volume ~50x at level 1.
            tiles.create_dataset(
                "mu", data=truth.mu, chunks=(1, 1, cols, cols), compression="gzip",
                compression_opts=1, shuffle=True,
            )  # fmt: skip
        group = f.create_group("particles")
        for key, value in truth.particles.items():
            group[key] = value
    tmp.replace(path)  # a reader never sees half a file
    return path


def read_truth(path: str | Path, *, volume: bool = True) -> TomoTruth:
    """Read a file written by :func:`write_truth`."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} file")
        tiles = f["tiles"]
        return TomoTruth(
            attrs=dict(f.attrs),
            sample_z_um=tiles["sample_z_um"][()],
            offsets_vox=tiles["offsets_vox"][()],
            steps_vox=tiles["steps_vox"][()],
            center_um=tiles["center_um"][()],
            particles={k: v[()] for k, v in f["particles"].items()},
            mu=tiles["mu"][()] if volume and "mu" in tiles else None,
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sim_devices.tomo_truth",
        description="Ground truth (mu volume, axis, tile steps, particles) of simulated "
        "TXM tomograms, in the frame of multiscope.analysis.tomo.reconstruct.",
    )
    add_ioc_arguments(parser)
    parser.add_argument(
        "--energy-keV", dest="energy_keV", type=float, default=DEFAULT_ENERGY_KEV,
        help="energy of the mu volume (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--sample-z-um", type=float, nargs="+", required=True, help="sample:z of each tile"
    )
    parser.add_argument(
        "--margin-px",
        type=float,
        default=DEFAULT_MARGIN_PX,
        help="margin of the scored region at the cylinder's edge, voxels (default %(default)s)",
    )
    parser.add_argument(
        "--row-margin-px",
        type=float,
        default=DEFAULT_ROW_MARGIN_PX,
        help="margin of the scored region at the first and last rows (default %(default)s)",
    )
    parser.add_argument("--no-volume", action="store_true", help="omit /tiles/mu")
    parser.add_argument("--out", required=True, help="HDF5 file to write")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Command line: build the truth and write it (see the module docstring)."""
    args = _parser().parse_args(argv)
    if not math.isfinite(args.axis_offset_px):
        raise SystemExit("--axis-offset-px must be finite")
    truth = build_truth(
        args.seed,
        args.binning,
        tuple(args.shape),
        args.sample_z_um,
        particles=args.particles,
        tab_width_um=args.tab_width_um,
        axis_offset_px=args.axis_offset_px,
        energy_keV=args.energy_keV,
        margin_px=args.margin_px,
        row_margin_px=args.row_margin_px,
        volume=not args.no_volume,
    )
    path = write_truth(args.out, truth)
    n_inside = int(np.count_nonzero(truth.particles["inside"]))
    print(
        f"{path}: {len(truth.sample_z_um)} tile(s), pixel {truth.pixel_size_um * 1e3:.2f} nm, "
        f"axis column {truth.axis_column_px:.3f}, {n_inside} scored particles"
    )


if __name__ == "__main__":
    main()
