"""Ground truth of the simulated PFIB-SEM: the phase labels of the sample at given depths.

The PFIB-SEM IOC (:mod:`sim_devices.fibsem`) renders faces of a seeded phantom
(:func:`sim_devices.physics.serial_phantom.make_serial_phantom`); this module rebuilds
the same phantom from the same options and paints its labels at any depths on any
grid, as :mod:`sim_devices.tomo_truth` does for the TXM. Depths are *true* depths
below the original face (the IOC's ``truth:depth_um`` and the frames' attribute
``true_depth_um``); the origin is ``(y, x)`` of the grid's outer corner on the face
(a frame's field origin: the nominal origin of
:class:`~sim_devices.physics.fibsem_scene.FieldGeometry` + true drift - beam shift).
The labels are those of the sample itself: without the Pt cap band, the fiducial or
deposited Pt (``--pt-filled`` adds the Pt-filled pore intervals, as kintsugi leaves).

Run::

    python -m sim_devices.fibsem_truth --phantom assb --seed 0 --depths 0.06 0.12 \\
        --shape 384 512 --pixel-um 0.05 --origin-um 12.4 9.2 --out truth.h5

    python -m sim_devices.fibsem_truth --phantom nmc --seed 1 --frames SEM_FILE.h5 \
        --state-file fibsem-state.json --out truth.h5   # every frame's own true grid

    python -m sim_devices.fibsem_truth --phantom tab --seed 0 --tab-width-um 78.4 ...

(``--phantom tab`` takes the IOC's ``--tab-width-um``: the TXM's tab of that seed and
width, seen through the block's window, :class:`~sim_devices.physics.serial_phantom.TabWindow`.)

The file holds ``/labels`` (n_depths, ny, nx) int8, ``/depths_um``, and as attributes
the options and the phase names by label (``phase_<label>``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import h5py
import numpy as np

from sim_devices.physics.fibsem_scene import DEFAULT_SIZE_UM
from sim_devices.physics.serial_phantom import (
    EMPTY_LABELS,
    KINDS,
    LABEL,
    PHASES,
    make_serial_phantom,
)
from sim_devices.physics.serial_render import FaceState

__all__ = ["frames_truth", "main", "truth_labels", "write_truth"]


def truth_labels(
    phantom: str,
    seed: int,
    depths_um: Sequence[float],
    shape: tuple[int, int],
    pixel_um: float,
    origin_um: tuple[float, float],
    *,
    size_um=DEFAULT_SIZE_UM,
    pt_filled: Sequence[tuple[float, float]] = (),
    tab_width_um: float | None = None,
) -> np.ndarray:
    """Labels ``(len(depths_um), ny, nx)`` int8 of the IOC's phantom at true depths.

    Parameters
    ----------
    phantom, seed, size_um, tab_width_um
        The IOC's ``--phantom``, ``--seed``, phantom size (default that of the IOC) and
        ``--tab-width-um`` (``"tab"`` only; None: the IOC's default).
    depths_um
        True depths below the original face.
    shape, pixel_um, origin_um
        The grid: ``(ny, nx)``, pixel size, ``(y, x)`` of its outer corner (um).
    pt_filled
        True-depth intervals whose open pores hold Pt (the state file's ``pt_filled``).
    """
    block = make_serial_phantom(phantom, tuple(size_um), int(seed), tab_width_um=tab_width_um)
    filled = FaceState([(float(a), float(b)) for a, b in pt_filled])
    out = np.empty((len(depths_um), int(shape[0]), int(shape[1])), dtype=np.int8)
    for i, depth in enumerate(depths_um):
        labels = block.labels(float(depth), shape, float(pixel_um), tuple(origin_um))
        if filled.pt_at(float(depth)):
            labels[np.isin(labels, EMPTY_LABELS)] = LABEL["pt"]
        out[i] = labels
    return out


def write_truth(path, labels: np.ndarray, depths_um, attrs: dict) -> None:
    """Write ``labels`` and their depths to HDF5 ``path`` with ``attrs``."""
    with h5py.File(path, "w") as f:
        f.create_dataset("labels", data=labels, compression="gzip")
        f.create_dataset("depths_um", data=np.asarray(depths_um, dtype=np.float64))
        for key, value in attrs.items():
            f.attrs[key] = value
        for phase in PHASES.values():
            f.attrs[f"phase_{phase.label}"] = phase.name


def frames_truth(phantom: str, seed: int, frames_path, *, size_um=DEFAULT_SIZE_UM,
                 pt_filled: Sequence[tuple[float, float]] = (),
                 tab_width_um: float | None = None):  # fmt: skip
    """Labels of every acquisition in an IOC frame file, on each one's true grid.

    The IOC records with every frame its true depth and its field's true origin and
    pixel (``true_depth_um``, ``origin_y_um``, ``origin_x_um``, ``pixel_um``); the
    labels are painted there for the first frame (channel) of each acquisition. The
    options are those of :func:`truth_labels`.

    Returns
    -------
    labels : ndarray (n, ny, nx) int8
    depths_um : ndarray (n,)
    """
    with h5py.File(frames_path, "r", swmr=True) as f:
        shape = f["/entry/data/data"].shape[-2:]
        attrs = {name: np.asarray(f[f"/entry/instrument/NDAttributes/{name}"][()])
                 for name in ("channel", "true_depth_um", "origin_y_um", "origin_x_um",
                              "pixel_um")}  # fmt: skip
    rows = np.flatnonzero(attrs["channel"] == 0)
    block = make_serial_phantom(phantom, tuple(size_um), int(seed), tab_width_um=tab_width_um)
    filled = FaceState([(float(a), float(b)) for a, b in pt_filled])
    out = np.empty((len(rows), int(shape[0]), int(shape[1])), dtype=np.int8)
    for i, row in enumerate(rows):
        depth = float(attrs["true_depth_um"][row])
        origin = (float(attrs["origin_y_um"][row]), float(attrs["origin_x_um"][row]))
        labels = block.labels(depth, shape, float(attrs["pixel_um"][row]), origin)
        if filled.pt_at(depth):
            labels[np.isin(labels, EMPTY_LABELS)] = LABEL["pt"]
        out[i] = labels
    return out, attrs["true_depth_um"][rows]


def main(argv: list[str] | None = None) -> None:
    """Parse the options, paint the labels, write the file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phantom", choices=KINDS, required=True)
    parser.add_argument("--seed", type=int, required=True, help="the IOC's --seed")
    parser.add_argument("--tab-width-um", type=float, default=None,
                        help="the IOC's --tab-width-um (--phantom tab)")  # fmt: skip
    parser.add_argument("--size-um", type=float, nargs=3, default=DEFAULT_SIZE_UM,
                        metavar=("X", "Y", "Z"), help="phantom size (IOC default)")  # fmt: skip
    parser.add_argument("--frames", help="an IOC frame file: the truth of its frames' grids")
    parser.add_argument("--depths", type=float, nargs="+",
                        help="true depths below the original face, um")  # fmt: skip
    parser.add_argument("--shape", type=int, nargs=2, metavar=("NY", "NX"))
    parser.add_argument("--pixel-um", type=float)
    parser.add_argument("--origin-um", type=float, nargs=2, metavar=("Y", "X"),
                        help="outer corner of the first pixel on the face")  # fmt: skip
    parser.add_argument("--pt-filled", type=float, nargs=2, action="append", default=[],
                        metavar=("FROM", "TO"), help="Pt-filled true depths")  # fmt: skip
    parser.add_argument("--state-file", help="the IOC's state file: its Pt-filled depths")
    parser.add_argument("--out", required=True, help="output HDF5 file")
    args = parser.parse_args(argv)
    if args.tab_width_um is not None and args.phantom != "tab":
        parser.error(f"--tab-width-um is for --phantom tab, not {args.phantom}")
    pt_filled = list(args.pt_filled)
    if args.state_file:
        with open(args.state_file) as f:
            pt_filled += [tuple(v) for v in json.load(f).get("pt_filled", [])]
    attrs = {"phantom": args.phantom, "seed": args.seed, "size_um": args.size_um}
    phantom = {"size_um": tuple(args.size_um), "tab_width_um": args.tab_width_um}
    if args.tab_width_um is not None:
        attrs["tab_width_um"] = args.tab_width_um
    if args.frames:
        labels, depths = frames_truth(args.phantom, args.seed, args.frames,
                                      pt_filled=pt_filled, **phantom)  # fmt: skip
        write_truth(args.out, labels, depths, {**attrs, "frames": str(args.frames)})
        return
    if (
        args.depths is None
        or args.shape is None
        or args.pixel_um is None
        or (args.origin_um is None)
    ):
        parser.error("give --frames, or --depths, --shape, --pixel-um and --origin-um")
    labels = truth_labels(args.phantom, args.seed, args.depths, tuple(args.shape), args.pixel_um,
                          tuple(args.origin_um), pt_filled=pt_filled, **phantom)  # fmt: skip
    write_truth(
        args.out,
        labels,
        args.depths,
        {**attrs, "pixel_um": args.pixel_um, "origin_um": args.origin_um},
    )


if __name__ == "__main__":
    main()
