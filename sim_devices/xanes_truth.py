"""Ground truth of a simulated 2D XANES projection: the true whiteline map of the TXM IOC.

The TXM IOC (:mod:`sim_devices.txm`) gives every NMC811 particle of its seeded tab
a seeded Ni oxidation-state field and, inside the XANES window, renders the Ni
K-edge model (:mod:`sim_devices.physics.xanes`). This module rebuilds the same
phantom and valence field from the same arguments and computes, for the projection
geometry the IOC images at a given angle and stage position, what a whiteline fit
should find, so runtime code can score a XANES map without importing
``sim_devices`` (it reads this file).

Definition (module docstring of :mod:`sim_devices.physics.xanes`): the truth
whiteline of a pixel is the energy of the maximum of the *summed resonant
absorbance* along its ray, ``sum_k L_k J(E) [s(E - E0(v_k)) + A g(E - Ew(v_k))]``
(``L_k`` chord through the shell of valence ``v_k``), i.e. the total absorbance
minus its smooth non-resonant background -- what pre-edge subtraction and
edge-step normalisation of the measured spectrum estimate. It lies between the
smallest and largest single-valence whiteline on the ray (8350.05 eV for Ni2+,
+1.5 eV per valence unit). With the IOC's ``--supersample N`` (N > 1: each pixel
averages the transmission of N x N sub-rays, as a camera does; the XANES demo uses
4) pass the same ``--supersample``: a pixel's resonant absorbance is then what it
measures minus the same without the Ni resonance,
``-ln mean exp(-b - r) + ln mean exp(-b)`` over its sub-rays
(:func:`sim_devices.physics.xanes.true_whiteline_map`), and its NMC thickness the
mean chord.

Consistency with the IOC
------------------------
Same ``--seed``, ``--particles``, ``--tab-width-um``, ``--binning``, ``--shape``,
``--axis-offset-px``, ``--valence-pattern`` and ``--valence-seed`` as the IOC, and the IOC's
``sample:theta``, ``sample:x``, ``sample:z`` (``sample:y`` 0, optics at their
start-up positions -- or moved with the energy pseudo-axis, which keeps the
magnification -- 2x objective, zone plate centred, no drift): the map is that of the
frames the IOC serves at those positions, *before* energy drift. A frame at energy
``E`` is this geometry shifted by its ``drift_x_px`` / ``drift_y_px`` attributes
(``scipy.ndimage.shift`` convention, (rows, columns) = (``drift_y_px``,
``drift_x_px``)); ``truth:drift_x_px`` / ``truth:drift_y_px`` show the shift at the
current energy.

HDF5 layout (``--out``)
-----------------------
``/`` attributes
    ``format`` (``"multiscope.xanes_truth"``), ``version`` (1), ``seed``,
    ``particles`` (-1: the default volume fill), ``tab_width_um`` (the phantom's
    width), ``binning``, ``rows``, ``cols``, ``pixel_size_um``, ``axis_offset_px``,
    ``axis_column_px`` (``(cols - 1)/2 + axis_offset_px + sample_x_um /
    pixel_size_um``), ``theta_deg``,
    ``sample_x_um``, ``sample_z_um``, ``center_um`` (tab point on the axis at the
    detector centre row), ``valence_pattern``, ``valence_seed``,
    ``valence_min``, ``valence_max`` (range over all NMC shells),
    ``whiteline_min_eV``, ``whiteline_max_eV`` (single-valence whitelines of that
    range: every unmasked pixel lies between them), ``edge_keV`` (8.333),
    ``xanes_window_keV`` (where the IOC renders the chemistry),
    ``n_fitted`` (unmasked pixels), ``supersample`` (sub-rays per pixel and
    axis), ``units``.
``/whiteline_eV`` (rows, cols) float64
    Truth whiteline energy, eV; NaN where masked.
``/mask`` (rows, cols) bool
    **True where masked**: the ray crosses no NMC811 (nothing to fit; same
    convention as :func:`multiscope.analysis.xanes.normalize`). Exactly the pixels
    that are *not* masked should be fitted.
``/nmc_thickness_um`` (rows, cols) float64
    NMC811 chord length along each ray (the mean over the pixel's sub-rays), um (0
    where masked).
``/mean_whiteline_eV`` (rows, cols) float64
    Thickness-weighted mean of the per-voxel whiteline energies, eV (NaN where
    masked): differs from ``whiteline_eV`` where valences mix; for comparison only.
``/valence/radius_fraction``, ``/valence/valence`` (n_nmc, n_shells) float64
    The valence field (:class:`sim_devices.physics.xanes.ValenceField`): shell ``j``
    of particle ``i`` spans ``radius_fraction[i, j+1] R_i < r <= radius_fraction[i, j]
    R_i`` with Ni valence ``valence[i, j]`` (unused shells have fraction 0).
``/valence/center_um`` (n_nmc, 3), ``/valence/radius_um`` (n_nmc,) float64
    The NMC particles (tab frame), in the rows of the tables above.

Command line::

    python -m sim_devices.xanes_truth --seed 0 --binning 4 --shape 128 128 \\
        --axis-offset-px 3.7 --theta-deg 0 --sample-x-um 0 --sample-z-um 0 \\
        [--particles N] [--tab-width-um 80] [--valence-pattern mixed] [--valence-seed S] \\
        [--supersample 4] --out truth.h5
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from sim_devices.physics import ElectrodeTab
from sim_devices.physics.phantom import DEFAULT_TAB_WIDTH_UM
from sim_devices.physics.txm_scene import (
    DEFAULT_AXIS_OFFSET_PX,
    DEFAULT_SUPERSAMPLE,
    DEFAULT_VALENCE_PATTERN,
    VALENCE_PATTERNS,
    TXMState,
    canonical_valence_pattern,
    make_valence,
)
from sim_devices.physics.xanes import (
    NI_K_EDGE_KEV,
    XANES_WINDOW_KEV,
    ValenceField,
    true_whiteline_map,
    whiteline_energy_eV,
)
from sim_devices.truth_common import add_ioc_arguments, phantom, scene

__all__ = [
    "FORMAT",
    "XanesTruth",
    "build_truth",
    "main",
    "phantom",
    "read_truth",
    "valence_field",
    "write_truth",
]

FORMAT = "multiscope.xanes_truth"
VERSION = 1
UNITS = "energies eV (window keV), lengths um, angles deg, positions px from 0"


def valence_field(tab: ElectrodeTab, pattern: str, seed: int) -> ValenceField:
    """The valence field the IOC gives ``tab`` for ``--valence-pattern`` and ``--valence-seed``."""
    field_ = make_valence(tab, pattern, seed)
    if field_ is None:
        raise ValueError("valence pattern 'none' has no chemistry, hence no whiteline truth")
    return field_


@dataclass
class XanesTruth:
    """Ground truth of one XANES projection (layout in the module docstring).

    Attributes
    ----------
    attrs : dict
        Root attributes of the HDF5 file.
    whiteline_eV, mean_whiteline_eV, nmc_thickness_um : numpy.ndarray
        (rows, cols) float64 maps.
    mask : numpy.ndarray
        (rows, cols) bool, True where the ray crosses no NMC (masked).
    valence : dict of str to numpy.ndarray
        ``radius_fraction``, ``valence``, ``center_um``, ``radius_um``.
    """

    attrs: dict
    whiteline_eV: np.ndarray  # noqa: N815 - unit spelling
    mask: np.ndarray
    nmc_thickness_um: np.ndarray
    mean_whiteline_eV: np.ndarray  # noqa: N815
    valence: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def build_truth(
    seed: int,
    binning: int,
    shape: tuple[int, int],
    *,
    particles: int | None = None,
    tab_width_um: float = DEFAULT_TAB_WIDTH_UM,
    axis_offset_px: float = DEFAULT_AXIS_OFFSET_PX,
    theta_deg: float = 0.0,
    sample_x_um: float = 0.0,
    sample_z_um: float = 0.0,
    valence_pattern: str = DEFAULT_VALENCE_PATTERN,
    valence_seed: int | None = None,
    tab: ElectrodeTab | None = None,
    supersample: int = DEFAULT_SUPERSAMPLE,
) -> XanesTruth:
    """True whiteline map of the projection the TXM IOC images with these arguments.

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
    axis_offset_px : float
        The IOC's ``--axis-offset-px``.
    theta_deg, sample_x_um, sample_z_um : float
        ``sample:theta`` (deg), ``sample:x`` and ``sample:z`` (um).
    valence_pattern : str
        The IOC's ``--valence-pattern`` (not ``none``).
    valence_seed : int, optional
        The IOC's ``--valence-seed`` (default ``seed``).
    tab : ElectrodeTab, optional
        The phantom, when already built (it must be
        ``phantom(seed, particles, tab_width_um)``).
    supersample : int
        The IOC's ``--supersample`` (sub-rays per pixel and axis of its renders).

    Returns
    -------
    XanesTruth
    """
    rows, cols = (int(v) for v in shape)
    pattern = canonical_valence_pattern(valence_pattern)
    vseed = int(seed) if valence_seed is None else int(valence_seed)
    tab = phantom(seed, particles, tab_width_um) if tab is None else tab
    vf = valence_field(tab, pattern, vseed)
    # The IOC's renderer without any drift: geometry and centre exactly as it projects.
    renderer = scene(tab, binning, axis_offset_px, seed)
    state = TXMState(
        theta_deg=float(theta_deg),
        sample_um=(float(sample_x_um), 0.0, float(sample_z_um)),
        binning=int(binning),
    )
    geometry = renderer.geometry(state, (rows, cols))
    center = renderer.center_um(state)
    truth = true_whiteline_map(
        tab, vf, geometry, math.radians(float(theta_deg)), center, supersample=int(supersample)
    )
    vmin, vmax = vf.valence_range
    mask = np.asarray(truth.mask, bool)
    attrs = {
        "format": FORMAT,
        "version": VERSION,
        "seed": int(seed),
        "particles": -1 if particles is None else int(particles),
        "tab_width_um": float(tab.width_um),
        "binning": int(binning),
        "rows": rows,
        "cols": cols,
        "pixel_size_um": float(geometry.pixel_size_um),
        "axis_offset_px": float(axis_offset_px),
        "axis_column_px": float(geometry.u0),
        "theta_deg": float(theta_deg),
        "sample_x_um": float(sample_x_um),
        "sample_z_um": float(sample_z_um),
        "center_um": np.asarray(center, dtype=np.float64),
        "valence_pattern": pattern,
        "valence_seed": vseed,
        "valence_min": vmin,
        "valence_max": vmax,
        "whiteline_min_eV": float(whiteline_energy_eV(vmin)),
        "whiteline_max_eV": float(whiteline_energy_eV(vmax)),
        "edge_keV": NI_K_EDGE_KEV,
        "xanes_window_keV": np.asarray(XANES_WINDOW_KEV, dtype=np.float64),
        "n_fitted": int(np.count_nonzero(~mask)),
        "supersample": int(supersample),
        "units": UNITS,
    }
    n = tab.n_nmc
    valence = {
        "radius_fraction": np.asarray(vf.radius_fraction, dtype=np.float64),
        "valence": np.asarray(vf.valence, dtype=np.float64),
        "center_um": np.asarray(tab.centers_um[:n], dtype=np.float64),
        "radius_um": np.asarray(tab.radii_um[:n], dtype=np.float64),
    }
    return XanesTruth(
        attrs=attrs,
        whiteline_eV=np.asarray(truth.whiteline_eV, dtype=np.float64),
        mask=mask,
        nmc_thickness_um=np.asarray(truth.nmc_thickness_um, dtype=np.float64),
        mean_whiteline_eV=np.asarray(truth.mean_whiteline_eV, dtype=np.float64),
        valence=valence,
    )


def write_truth(path: str | Path, truth: XanesTruth) -> Path:
    """Write ``truth`` to an HDF5 file (layout in the module docstring), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with h5py.File(tmp, "w") as f:
        f.attrs.update(truth.attrs)
        f["whiteline_eV"] = truth.whiteline_eV
        f["mask"] = truth.mask
        f["nmc_thickness_um"] = truth.nmc_thickness_um
        f["mean_whiteline_eV"] = truth.mean_whiteline_eV
        group = f.create_group("valence")
        for key, value in truth.valence.items():
            group[key] = value
    tmp.replace(path)  # a reader never sees half a file
    return path


def read_truth(path: str | Path) -> XanesTruth:
    """Read a file written by :func:`write_truth`."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} file")
        return XanesTruth(
            attrs=dict(f.attrs),
            whiteline_eV=f["whiteline_eV"][()],
            mask=f["mask"][()].astype(bool),
            nmc_thickness_um=f["nmc_thickness_um"][()],
            mean_whiteline_eV=f["mean_whiteline_eV"][()],
            valence={k: v[()] for k, v in f["valence"].items()},
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sim_devices.xanes_truth",
        description="True Ni whiteline map (eV), NMC mask and valence field of the "
        "projection the simulated TXM IOC images with the same arguments.",
    )
    add_ioc_arguments(parser)
    parser.add_argument("--theta-deg", type=float, default=0.0, help="sample:theta (deg)")
    parser.add_argument("--sample-x-um", type=float, default=0.0, help="sample:x (um)")
    parser.add_argument("--sample-z-um", type=float, default=0.0, help="sample:z (um)")
    parser.add_argument(
        "--valence-pattern",
        choices=tuple(p for p in VALENCE_PATTERNS if p != "none"),
        default=DEFAULT_VALENCE_PATTERN,
        help="the IOC's --valence-pattern (default %(default)s)",
    )
    parser.add_argument(
        "--valence-seed", type=int, default=None, help="the IOC's --valence-seed (default: --seed)"
    )
    parser.add_argument(
        "--supersample",
        type=int,
        default=DEFAULT_SUPERSAMPLE,
        help="the IOC's --supersample (default %(default)s)",
    )
    parser.add_argument("--out", required=True, help="HDF5 file to write")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Command line: build the truth and write it (see the module docstring)."""
    args = _parser().parse_args(argv)
    for name in ("axis_offset_px", "theta_deg", "sample_x_um", "sample_z_um"):
        if not math.isfinite(getattr(args, name)):
            raise SystemExit(f"--{name.replace('_', '-')} must be finite")
    truth = build_truth(
        args.seed,
        args.binning,
        tuple(args.shape),
        particles=args.particles,
        tab_width_um=args.tab_width_um,
        axis_offset_px=args.axis_offset_px,
        theta_deg=args.theta_deg,
        sample_x_um=args.sample_x_um,
        sample_z_um=args.sample_z_um,
        valence_pattern=args.valence_pattern,
        valence_seed=args.valence_seed,
        supersample=args.supersample,
    )
    path = write_truth(args.out, truth)
    a = truth.attrs
    wl = truth.whiteline_eV[~truth.mask]
    span = f"{wl.min():.3f}-{wl.max():.3f} eV" if wl.size else "no NMC in view"
    print(
        f"{path}: {a['rows']} x {a['cols']} px of {a['pixel_size_um'] * 1e3:.2f} nm, "
        f"{a['n_fitted']} pixels with NMC, whiteline {span}, "
        f"valence {a['valence_min']:.3f}-{a['valence_max']:.3f}"
    )


if __name__ == "__main__":
    main()
