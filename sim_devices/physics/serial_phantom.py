"""Analytic 3-D phantoms for serial sectioning (PFIB-SEM slice and view), with ground truth.

Three electrodes: two as in the source papers, and the chain's tab:

* ``"assb"``: an all-solid-state composite cathode (Al2O3-coated LiCoO2 particles of
  0.5-3 um, Li6.4La3Zr1.4Ta0.6O12 (LLZTO) grains of 2-8 um, Super P carbon
  agglomerates, pores, and cracks through some particles);
* ``"nmc"``: an NMC811 cathode (secondary particles of 3-10 um), a carbon-binder
  domain (CBD) filling part of the gaps, and open pores;
* ``"tab"``: the laser-cut NMC811 tab the simulated TXM images
  (:func:`sim_devices.physics.phantom.make_tab`, same seed and width): its NMC811
  spheres and CBD blobs, seen through a window of the block's size in its coating
  (:class:`TabWindow` gives the mapping between the two frames).

Frame (micrometres): the milled face is the ``x``-``y`` plane (``x`` along image
columns, ``y`` along image rows); ``z`` is the depth below the original face, the
direction the ion beam advances. :meth:`SerialPhantom.labels` paints the phase labels
of the face at any depth on any pixel grid: exact per sample point, so a grid's
truth is consistent at any resolution and any origin (drift).

Every shape is a sphere (shells for coatings, planar slabs for cracks) or a smooth
random field (the CBD), evaluated analytically; spheres are packed without overlap
by the same random sequential addition as the TXM phantom
(:func:`sim_devices.physics.phantom._rsa_pack`).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numba as nb
import numpy as np
from scipy import ndimage

from .materials import MATERIAL_IDS
from .phantom import ElectrodeTab, _rsa_pack, cached_tab, make_tab

__all__ = ["DEFAULT_TAB_WIDTH_UM", "KINDS", "PHASES", "TAB_FACE_BELOW_END_UM", "Phase",
           "SerialPhantom", "TabWindow", "make_serial_phantom"]  # fmt: skip

#: The phantom kinds (:func:`make_serial_phantom`).
KINDS = ("assb", "nmc", "tab")
#: How far below the tab's top end its original face lies (um): the block-face
#: preparation mills away the laser-cut end (its heat-affected zone) and the layer
#: where the packing meets the end (one largest particle, 10 um).
TAB_FACE_BELOW_END_UM = 10.0
#: The tab's width when none is given: make_tab's default, as the TXM IOC builds it (um).
DEFAULT_TAB_WIDTH_UM = float(inspect.signature(make_tab).parameters["width_um"].default)


@dataclass(frozen=True)
class Phase:
    """One phase: its label in the truth maps, chemistry and density (g/cm^3)."""

    label: int
    name: str
    formula: str  # "" for empty space
    density_g_cm3: float


# Labels are shared by all phantoms so one colour map and one classifier setup serve.
PHASES: dict[str, Phase] = {
    p.name: p
    for p in (
        Phase(0, "pore", "", 0.0),
        Phase(1, "carbon", "C", 1.9),  # Super P agglomerates
        Phase(2, "cbd", "C5.725H1.562F1.562", 1.8),  # carbon black + PVDF binder
        Phase(3, "lco", "LiCoO2", 5.06),
        Phase(4, "nmc811", "LiNi0.8Mn0.1Co0.1O2", 4.75),
        Phase(5, "llzto", "Li6.4La3Zr1.4Ta0.6O12", 5.1),
        Phase(6, "al2o3", "Al2O3", 3.95),  # the LCO coating
        Phase(7, "crack", "", 0.0),  # empty, inside a particle
        Phase(8, "pt", "Pt", 21.45),  # deposited in open pores (kintsugi)
        # The fiducial "X" milled into the protective Pt cap on the top surface: empty,
        # but not an open pore of the face (no back wall; kintsugi's Pt does not reach
        # it), so the mark looks the same on every slice.
        Phase(9, "groove", "", 0.0),
    )
}
LABEL = {name: p.label for name, p in PHASES.items()}
EMPTY_LABELS = (LABEL["pore"], LABEL["crack"])
COATING_WEIGHT_FRACTION = 0.01  # Al2O3 on LiCoO2 (seed 004)
# The tab's sphere materials (sim_devices.physics.materials ids) as phase labels.
_TAB_LABELS = {MATERIAL_IDS["nmc811"]: LABEL["nmc811"], MATERIAL_IDS["cbd"]: LABEL["cbd"]}

_SPHERE_DTYPE = np.dtype(
    [("x", "f8"), ("y", "f8"), ("z", "f8"), ("r", "f8"), ("label", "i1"), ("coat", "f8"),
     ("nx", "f8"), ("ny", "f8"), ("nz", "f8"), ("crack", "f8")]
)  # fmt: skip


@nb.njit(cache=True)
def _paint(out, depth, x0, y0, pixel, sub, xs, ys, zs, rs, labels, coats, nxs, nys, nzs,
           cracks, coat_label, crack_label):  # fmt: skip
    """Paint sphere labels into ``out`` (rows y, columns x), sampled ``sub`` x ``sub`` per
    pixel; ``out`` has shape (ny * sub, nx * sub): one entry per sample point."""
    n_rows, n_cols = out.shape
    step = pixel / sub
    for k in range(xs.shape[0]):
        dz = depth - zs[k]
        r = rs[k]
        if abs(dz) >= r:
            continue
        rc = math.sqrt(r * r - dz * dz)
        c0 = max(0, int((xs[k] - rc - x0) / step - 0.5))
        c1 = min(n_cols - 1, int((xs[k] + rc - x0) / step + 0.5))
        r0 = max(0, int((ys[k] - rc - y0) / step - 0.5))
        r1 = min(n_rows - 1, int((ys[k] + rc - y0) / step + 0.5))
        for i in range(r0, r1 + 1):
            dy = y0 + (i + 0.5) * step - ys[k]
            for j in range(c0, c1 + 1):
                dx = x0 + (j + 0.5) * step - xs[k]
                d2 = dx * dx + dy * dy
                if d2 >= rc * rc:
                    continue
                label = labels[k]
                if coats[k] > 0.0 and math.sqrt(d2 + dz * dz) > r - coats[k]:
                    label = coat_label
                if cracks[k] > 0.0 and abs(nxs[k] * dx + nys[k] * dy + nzs[k] * dz) < cracks[k]:
                    label = crack_label
                out[i, j] = label


@dataclass(frozen=True)
class TabWindow:
    """Where a serial-section block sits in an :class:`~.phantom.ElectrodeTab` (um).

    The milled face spans the tab's width (tab ``x``) and its coating's thickness (tab
    ``y``): a cross-section of the electrode, as in seed 003's images. The ion beam
    comes down through the coating from its free surface, parallel to the face, so
    image rows (block ``y``) run from the free surface towards the foil; each slice
    advances the face along the tab's height (tab ``z``) down from its top end::

        x_tab = x + x0_um        y_tab = y0_um - y        z_tab = z0_um - depth

    (a rotation by 180 deg about ``x``: the frames have the same handedness).
    """

    x0_um: float  # tab x of block x = 0 (the first image column's outer edge)
    y0_um: float  # tab y of block y = 0 (the first image row's outer edge, free-surface side)
    z0_um: float  # tab z of the original face (depth 0)

    @classmethod
    def centred(cls, tab: ElectrodeTab, size_um,
                below_end_um: float = TAB_FACE_BELOW_END_UM) -> TabWindow:  # fmt: skip
        """The face centred on the coating's cross-section, ``below_end_um`` below the end.

        Raises
        ------
        ValueError
            If the face does not fit inside the coating (it must not reach the foil or
            the cut edges) or the block's depth runs out of the tab.
        """
        width, height, depth = (float(v) for v in size_um)
        c0, c1 = tab.coating_y_um
        if width > tab.width_um or height > c1 - c0:
            raise ValueError(f"a {width:g} x {height:g} um face does not fit in the tab's "
                             f"{tab.width_um:g} x {c1 - c0:g} um coating section")  # fmt: skip
        if below_end_um < 0 or below_end_um + depth > tab.height_um:
            raise ValueError(f"a {depth:g} um block {below_end_um:g} um below the end does "
                             f"not fit in the tab's {tab.height_um:g} um height")  # fmt: skip
        return cls(-width / 2, (c0 + c1) / 2 + height / 2, tab.height_um - below_end_um)

    def to_tab(self, x, y, depth):
        """Tab ``(x, y, z)`` of block ``(x, y, depth)``."""
        return (np.add(x, self.x0_um), np.subtract(self.y0_um, y),
                np.subtract(self.z0_um, depth))  # fmt: skip

    def from_tab(self, x, y, z):
        """Block ``(x, y, depth)`` of tab ``(x, y, z)`` (inverse of :meth:`to_tab`)."""
        return (np.subtract(x, self.x0_um), np.subtract(self.y0_um, y),
                np.subtract(self.z0_um, z))  # fmt: skip


@dataclass
class SerialPhantom:
    """A packed electrode block; :meth:`labels` gives any face of it.

    Attributes
    ----------
    kind : str
        ``"assb"``, ``"nmc"`` or ``"tab"``.
    size_um : (float, float, float)
        Extent in x, y (the face) and z (depth).
    spheres : structured ndarray
        Particle centres, radii, labels, coating thickness, crack plane.
    binder : ndarray or None
        The CBD's smooth random field on a grid of ``binder_spacing_um``
        (z, y, x); CBD where it exceeds ``binder_threshold`` outside particles.
    tab_window : TabWindow or None
        For ``"tab"``: where the block sits in the :class:`~.phantom.ElectrodeTab`.
    """

    kind: str
    size_um: tuple[float, float, float]
    spheres: np.ndarray
    binder: np.ndarray | None = None
    binder_spacing_um: float = 0.25
    binder_threshold: float = 0.0
    tab_window: TabWindow | None = None

    @classmethod
    def from_tab(cls, tab: ElectrodeTab, size_um, window: TabWindow | None = None,
                 margin_um: float = 4.0) -> SerialPhantom:  # fmt: skip
        """The block ``size_um`` of ``tab`` seen through ``window`` (default centred).

        NMC811 spheres are labelled ``nmc811``, CBD blobs ``cbd`` (spheres: no binder
        field), the rest of the coating is open pore; the tab has no cracks or
        coatings. The spheres kept are those reaching into the block grown by
        ``margin_um`` on every side, so any face there is exact.
        """
        size = tuple(float(v) for v in size_um)
        window = window or TabWindow.centred(tab, size)
        x, y, z = window.from_tab(*tab.centers_um.T)
        r = tab.radii_um
        keep = np.ones(r.shape, dtype=bool)
        for coord, extent in zip((x, y, z), size, strict=True):
            keep &= (coord + r > -margin_um) & (coord - r < extent + margin_um)
        spheres = np.zeros(int(keep.sum()), dtype=_SPHERE_DTYPE)
        spheres["x"], spheres["y"], spheres["z"], spheres["r"] = x[keep], y[keep], z[keep], r[keep]
        materials = tab.material_ids[keep]
        unknown = set(np.unique(materials).tolist()) - set(_TAB_LABELS)
        if unknown:
            raise ValueError(f"tab spheres of material ids {sorted(unknown)}: not in the block")
        spheres["label"] = [_TAB_LABELS[int(m)] for m in materials]
        return cls("tab", size, spheres, tab_window=window)

    def labels(self, depth_um: float, shape, pixel_um: float, origin_um=(0.0, 0.0), *,
               sub: int = 1) -> np.ndarray:  # fmt: skip
        """Phase labels ``(shape[0] * sub, shape[1] * sub)`` of the face at ``depth_um``.

        Parameters
        ----------
        depth_um : float
            Depth of the face below the original surface.
        shape : (int, int)
            Rows (y) and columns (x) of the pixel grid.
        pixel_um : float
            Pixel size.
        origin_um : (float, float)
            ``(y, x)`` of the grid's outer corner (the edge of the first pixel).
        sub : int
            Samples per pixel along each axis (``sub`` x ``sub``; for area fractions).
        """
        rows, cols = int(shape[0]) * sub, int(shape[1]) * sub
        out = np.zeros((rows, cols), dtype=np.int8)
        if self.binder is not None:
            step = pixel_um / sub
            y = origin_um[0] + (np.arange(rows) + 0.5) * step
            x = origin_um[1] + (np.arange(cols) + 0.5) * step
            s = self.binder_spacing_um
            coords = np.broadcast_arrays(
                np.full((rows, cols), depth_um / s), y[:, None] / s, x[None, :] / s
            )
            field = ndimage.map_coordinates(self.binder, coords, order=1, mode="nearest")
            out[field > self.binder_threshold] = LABEL["cbd"]
        sp = self.spheres
        _paint(out, float(depth_um), float(origin_um[1]), float(origin_um[0]), float(pixel_um),
               int(sub), sp["x"], sp["y"], sp["z"], sp["r"], sp["label"], sp["coat"], sp["nx"],
               sp["ny"], sp["nz"], sp["crack"], LABEL["al2o3"], LABEL["crack"])  # fmt: skip
        return out

    def fractions(self, depth_um, shape, pixel_um, origin_um=(0.0, 0.0), *, sub: int = 3):
        """Area fraction of every phase per pixel: ``(n_phases, *shape)`` float32.

        A pixel's signal integrates the face over its area (``sub`` x ``sub`` samples),
        so pixels on a boundary mix phases as a detector's do.
        """
        fine = self.labels(depth_um, shape, pixel_um, origin_um, sub=sub)
        n = len(PHASES)
        counts = np.zeros((n, int(shape[0]), int(shape[1])), dtype=np.float32)
        blocks = fine.reshape(int(shape[0]), sub, int(shape[1]), sub)
        for label in np.unique(fine):
            counts[label] = (blocks == label).sum(axis=(1, 3))
        return counts / (sub * sub)


def _crack_planes(rng, n, fraction, half_thickness_um):
    normals = rng.normal(size=(n, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    half = np.where(rng.random(n) < fraction, half_thickness_um, 0.0)
    return normals, half


def _pack(rng, diameters, labels, lo, hi, gap, shrink_to):
    order = np.argsort(-diameters)  # large first: they need the room
    radii = diameters[order] / 2.0
    attempts = np.full(radii.shape, 200, dtype=np.int64)
    shrink_min = radii * shrink_to
    state = np.array([rng.integers(1, 2**62)], dtype=np.uint64)
    cell = max(1.0, 2.0 * float(np.median(radii)))  # as the TXM phantom: dense small spheres
    centres, rad, placed = _rsa_pack(radii, np.asarray(lo, float), np.asarray(hi, float), cell,
                                     gap, attempts, shrink_min, state)  # fmt: skip
    return centres[placed], rad[placed], np.asarray(labels)[order][placed]


def make_serial_phantom(kind: str = "assb", size_um=(40.0, 40.0, 12.0), seed: int = 0, *,
                        tab_width_um: float | None = None) -> SerialPhantom:  # fmt: skip
    """Build one of the phantoms (see the module notes); deterministic for a seed.

    The block spans ``0..size_um`` in x, y and z; particles may extend past its sides
    (the face is a window into a larger electrode), so the edges are not empty.

    For ``"tab"`` the block is a window into ``make_tab(seed=seed, width_um=
    tab_width_um)`` (the TXM IOC's call; :data:`DEFAULT_TAB_WIDTH_UM` when None) placed by
    :meth:`TabWindow.centred`; ``tab_width_um`` is for ``"tab"`` only.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown phantom kind {kind!r}: one of {KINDS}")
    if kind == "tab":
        width = DEFAULT_TAB_WIDTH_UM if tab_width_um is None else float(tab_width_um)
        # Packed once, kept for the next simulator (as the TXM IOC's: cached_tab).
        return SerialPhantom.from_tab(cached_tab(seed=int(seed), width_um=width), size_um)
    if tab_width_um is not None:
        raise ValueError(f"tab_width_um is for the 'tab' phantom, not {kind!r}")
    rng = np.random.default_rng(seed)
    width, height, depth = (float(v) for v in size_um)
    margin = 4.0
    lo = (-margin, -margin, -margin)
    hi = (width + margin, height + margin, depth + margin)
    volume = (width + 2 * margin) * (height + 2 * margin) * (depth + 2 * margin)

    def to_volume(fraction, draw):
        """Diameters drawn until their spheres fill ``fraction`` of the block."""
        diameters = draw(256)
        while (math.pi / 6 * diameters**3).sum() < fraction * volume:
            diameters = np.concatenate([diameters, draw(256)])
        filled = np.cumsum(math.pi / 6 * diameters**3)
        return diameters[: int(np.searchsorted(filled, fraction * volume)) + 1]

    if kind == "assb":
        llzto_d = to_volume(0.17, lambda n: rng.uniform(2.0, 8.0, n))
        lco_d = to_volume(0.42, lambda n: rng.uniform(0.5, 3.0, n))
        super_p = to_volume(0.06, lambda n: rng.uniform(0.3, 1.0, n))
        diameters = np.concatenate([llzto_d, lco_d, super_p])
        labels = np.concatenate([np.full(llzto_d.size, LABEL["llzto"]),
                                 np.full(lco_d.size, LABEL["lco"]),
                                 np.full(super_p.size, LABEL["carbon"])])  # fmt: skip
        centres, radii, labels = _pack(rng, diameters, labels, lo, hi, gap=0.05, shrink_to=0.6)
        binder = None
    else:  # "nmc"
        nmc_d = to_volume(0.55, lambda n: np.clip(rng.lognormal(np.log(6.0), 0.3, n), 3.0, 10.0))
        labels = np.full(nmc_d.size, LABEL["nmc811"])
        centres, radii, labels = _pack(rng, nmc_d, labels, lo, hi, gap=0.15, shrink_to=0.5)
        binder = None
    n = radii.size
    spheres = np.zeros(n, dtype=_SPHERE_DTYPE)
    spheres["x"], spheres["y"], spheres["z"] = centres[:, 0], centres[:, 1], centres[:, 2]
    spheres["r"], spheres["label"] = radii, labels
    if kind == "assb":
        # Seed 004: 1 wt % Al2O3 on LCO. A shell of thickness t on radius R holds
        # 3 t rho_Al2O3 / (R rho_LCO) of the particle's mass: t = w R rho_LCO / (3 rho_Al2O3),
        # a few nm (sub-pixel: it shows in EDS Al only faintly, as at the instrument).
        w = COATING_WEIGHT_FRACTION
        rho_lco, rho_coat = PHASES["lco"].density_g_cm3, PHASES["al2o3"].density_g_cm3
        spheres["coat"] = np.where(
            labels == LABEL["lco"], w * radii * rho_lco / (3 * rho_coat), 0.0
        )
        cracked = (labels == LABEL["lco"]) | (labels == LABEL["llzto"])
        normals, half = _crack_planes(rng, n, 0.25, 0.06)
        half[~cracked | (radii < 0.8)] = 0.0
    else:
        normals, half = _crack_planes(rng, n, 0.15, 0.05)
    spheres["nx"], spheres["ny"], spheres["nz"] = normals.T
    spheres["crack"] = half
    phantom = SerialPhantom(kind, (width, height, depth), spheres, binder)
    if kind == "nmc":
        phantom.binder, phantom.binder_threshold = _binder_field(rng, lo, hi, phantom)
    return phantom


def _binder_field(rng, lo, hi, phantom, solid_share=0.25, spacing=0.25):
    """A smooth random field whose top part, outside the particles, is the CBD: its
    threshold is set so the CBD is ``solid_share`` of all solid on a probe face."""
    shape = tuple(int(math.ceil((b - a) / spacing)) + 1 for a, b in zip(lo, hi, strict=True))
    noise = ndimage.gaussian_filter(rng.standard_normal(shape[::-1]), 2.0)  # (z, y, x)
    # The field grid starts at lo: shift it so grid index 0 is at coordinate 0 by padding.
    pad = [int(round(-a / spacing)) for a in lo[::-1]]
    field = noise[pad[0] :, pad[1] :, pad[2] :]
    phantom.binder, phantom.binder_spacing_um = field, spacing
    width, height, depth = phantom.size_um
    probe_shape = (int(height / 0.1), int(width / 0.1))
    phantom.binder_threshold = np.inf
    particles = phantom.labels(depth / 2, probe_shape, 0.1) == LABEL["nmc811"]
    coords = np.broadcast_arrays(
        np.full(probe_shape, depth / 2 / spacing),
        ((np.arange(probe_shape[0]) + 0.5) * 0.1 / spacing)[:, None],
        ((np.arange(probe_shape[1]) + 0.5) * 0.1 / spacing)[None, :],
    )
    values = ndimage.map_coordinates(field, coords, order=1, mode="nearest")[~particles]
    # CBD area = share * (particles + CBD)  ->  CBD pixels = share / (1 - share) * particles
    wanted = solid_share / (1.0 - solid_share) * particles.sum()
    quantile = 1.0 - min(wanted / max(values.size, 1), 0.95)
    return field, float(np.quantile(values, quantile))
