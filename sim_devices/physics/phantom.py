"""Analytic phantom of a laser-cut NMC811 electrode tab (Tan et al. 2020).

Geometry (tab frame, all lengths in um)
--------------------------------------
* ``z`` is vertical, along the long edge of the tab; it is the rotation axis of the
  nano-CT stage.  The tab spans ``0 <= z <= height_um``.
* ``x`` runs across the laser-cut width: ``-width_um/2 <= x <= width_um/2``.
* ``y`` is the through-thickness direction (normal of the current collector).  The
  cross-section is centred on ``y = 0``: the Al foil occupies
  ``y0 <= y <= y0 + foil_thickness_um`` with ``y0 = -(foil + coating)/2`` and the
  single-sided coating sits on top of it, up to ``+(foil + coating)/2``.

The foil plane is therefore parallel to the rotation axis, as in the paper's tab
geometry.  The coating is a box of pore medium containing non-overlapping spheres:
NMC811 secondary particles (log-normal diameters, 1-10 um) and smaller
carbon-binder-domain (CBD) blobs packed into the gaps between them.  Every shape is
analytic and disjoint, so projections (:mod:`.projector`) are exact and the
voxelised ground truth (:meth:`ElectrodeTab.voxelize`) is consistent with them.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numba as nb
import numpy as np

from .materials import MATERIAL_IDS, mu_table

__all__ = ["DEFAULT_TAB_WIDTH_UM", "ElectrodeTab", "VoxelVolume", "make_tab"]

#: Width (x, across the laser cut) of :func:`make_tab`'s tab, um: the TXM's default sample.
DEFAULT_TAB_WIDTH_UM = 80.0

_NMC = MATERIAL_IDS["nmc811"]
_CBD = MATERIAL_IDS["cbd"]
_AL = MATERIAL_IDS["al"]
_PARTICLE_DTYPE = np.dtype([("x", "f8"), ("y", "f8"), ("z", "f8"), ("r", "f8"), ("material", "i4")])


# --------------------------------------------------------------------------------------
# Random sequential packing (numba)
# --------------------------------------------------------------------------------------
@nb.njit(cache=True, inline="always")
def _next_uniform(state):
    # xorshift64*: a self-contained stream so seeding never touches numba's global RNG.
    x = state[0]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    state[0] = x
    y = x * np.uint64(2685821657736338717)
    return float(y >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@nb.njit(cache=True)
def _rsa_pack(radii, lo, hi, cell, gap, attempts, shrink_min, seed_state):
    """Random sequential addition of spheres with a linked-list grid hash.

    Spheres are tried in the given order; a sphere that fails ``attempts[i]``
    times is shrunk by 0.85 and retried while it stays above ``shrink_min[i]``
    (set ``shrink_min[i] = radii[i]`` to forbid shrinking); otherwise dropped.
    """
    n = radii.shape[0]
    nx = max(1, int(math.ceil((hi[0] - lo[0]) / cell)))
    ny = max(1, int(math.ceil((hi[1] - lo[1]) / cell)))
    nz = max(1, int(math.ceil((hi[2] - lo[2]) / cell)))
    head = np.full(nx * ny * nz, -1, np.int64)
    # Upper bound of grid entries: each sphere registers in its bounding-box cells.
    cap = 0
    for i in range(n):
        k = int((2.0 * radii[i] + gap) / cell) + 2
        cap += k * k * k
    nxt = np.empty(cap, np.int64)
    item = np.empty(cap, np.int64)
    n_entries = 0

    centers = np.zeros((n, 3))
    rad = radii.copy()
    placed = np.zeros(n, np.bool_)
    for i in range(n):
        r = rad[i]
        ok = False
        while True:
            span_ok = True
            for a in range(3):
                if hi[a] - lo[a] < 2.0 * r:
                    span_ok = False
            if span_ok:
                for _ in range(attempts[i]):
                    px = lo[0] + r + (hi[0] - lo[0] - 2.0 * r) * _next_uniform(seed_state)
                    py = lo[1] + r + (hi[1] - lo[1] - 2.0 * r) * _next_uniform(seed_state)
                    pz = lo[2] + r + (hi[2] - lo[2] - 2.0 * r) * _next_uniform(seed_state)
                    ext = r + gap
                    i0 = max(0, int((px - ext - lo[0]) / cell))
                    i1 = min(nx - 1, int((px + ext - lo[0]) / cell))
                    j0 = max(0, int((py - ext - lo[1]) / cell))
                    j1 = min(ny - 1, int((py + ext - lo[1]) / cell))
                    k0 = max(0, int((pz - ext - lo[2]) / cell))
                    k1 = min(nz - 1, int((pz + ext - lo[2]) / cell))
                    clash = False
                    for kk in range(k0, k1 + 1):
                        for jj in range(j0, j1 + 1):
                            for ii in range(i0, i1 + 1):
                                e = head[(kk * ny + jj) * nx + ii]
                                while e >= 0:
                                    j = item[e]
                                    dx = centers[j, 0] - px
                                    dy = centers[j, 1] - py
                                    dz = centers[j, 2] - pz
                                    lim = rad[j] + r + gap
                                    if dx * dx + dy * dy + dz * dz < lim * lim:
                                        clash = True
                                        break
                                    e = nxt[e]
                                if clash:
                                    break
                            if clash:
                                break
                        if clash:
                            break
                    if not clash:
                        centers[i, 0] = px
                        centers[i, 1] = py
                        centers[i, 2] = pz
                        ok = True
                        break
            if ok or r * 0.85 < shrink_min[i]:
                break
            r *= 0.85
        if not ok:
            continue
        rad[i] = r
        placed[i] = True
        # Register in every cell its (gap-padded) bounding box touches.
        ext = r + 0.5 * gap
        i0 = max(0, int((centers[i, 0] - ext - lo[0]) / cell))
        i1 = min(nx - 1, int((centers[i, 0] + ext - lo[0]) / cell))
        j0 = max(0, int((centers[i, 1] - ext - lo[1]) / cell))
        j1 = min(ny - 1, int((centers[i, 1] + ext - lo[1]) / cell))
        k0 = max(0, int((centers[i, 2] - ext - lo[2]) / cell))
        k1 = min(nz - 1, int((centers[i, 2] + ext - lo[2]) / cell))
        for kk in range(k0, k1 + 1):
            for jj in range(j0, j1 + 1):
                for ii in range(i0, i1 + 1):
                    c = (kk * ny + jj) * nx + ii
                    item[n_entries] = i
                    nxt[n_entries] = head[c]
                    head[c] = n_entries
                    n_entries += 1
    return centers, rad, placed


# --------------------------------------------------------------------------------------
# Voxelisation (numba)
# --------------------------------------------------------------------------------------
@nb.njit(cache=True)
def _voxelize_spheres(material, label, centers, radii, mats, origin, h):
    nz, ny, nx = material.shape
    for s in range(radii.shape[0]):
        cx = centers[s, 0]
        cy = centers[s, 1]
        cz = centers[s, 2]
        r = radii[s]
        r2 = r * r
        # Voxel centre of index i sits at origin + i*h: invert for the bounding box.
        i0 = max(0, int(math.ceil((cx - r - origin[0]) / h)))
        i1 = min(nx - 1, int(math.floor((cx + r - origin[0]) / h)))
        j0 = max(0, int(math.ceil((cy - r - origin[1]) / h)))
        j1 = min(ny - 1, int(math.floor((cy + r - origin[1]) / h)))
        k0 = max(0, int(math.ceil((cz - r - origin[2]) / h)))
        k1 = min(nz - 1, int(math.floor((cz + r - origin[2]) / h)))
        m = mats[s]
        for k in range(k0, k1 + 1):
            dz = origin[2] + k * h - cz
            for j in range(j0, j1 + 1):
                dy = origin[1] + j * h - cy
                d2 = dz * dz + dy * dy
                if d2 > r2:
                    continue
                for i in range(i0, i1 + 1):
                    dx = origin[0] + i * h - cx
                    if d2 + dx * dx <= r2:
                        material[k, j, i] = m
                        label[k, j, i] = s + 1


# --------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class VoxelVolume:
    """A voxelised (point-sampled at voxel centres) copy of the phantom.

    Arrays are indexed ``[z, y, x]``; voxel ``[k, j, i]`` is centred at
    ``origin_um + (i, j, k) * voxel_size_um`` in the tab frame.

    Attributes
    ----------
    material : numpy.ndarray
        uint8 material ids (see :data:`.materials.MATERIAL_IDS`); outside the tab is
        ``"pore"`` (0).
    label : numpy.ndarray
        int32, ``1 + index`` into :attr:`ElectrodeTab.particles` for voxels inside a
        sphere (NMC particles come first, see :attr:`ElectrodeTab.n_nmc`), else 0.
    mu : numpy.ndarray or None
        float32 attenuation in 1/um at ``energy_keV`` (None if no energy was given).
    origin_um : tuple of float
        (x, y, z) of the centre of voxel [0, 0, 0], um.
    voxel_size_um : float
        Cubic voxel edge, um.
    energy_keV : float or None
        Energy of ``mu``.
    """

    material: np.ndarray
    label: np.ndarray
    mu: np.ndarray | None
    origin_um: tuple[float, float, float]
    voxel_size_um: float
    energy_keV: float | None  # noqa: N815 - unit spelling, as in all arguments


@dataclass(frozen=True, eq=False)
class ElectrodeTab:
    """Analytic NMC811 electrode tab: a foil box, a coating box and disjoint spheres.

    Build one with :func:`make_tab`.  See the module docstring for the axis
    convention.  All lengths are in um.

    Attributes
    ----------
    width_um, coating_thickness_um, foil_thickness_um, height_um : float
        Outer dimensions (x width, y thicknesses, z height).
    centers_um : numpy.ndarray
        (n, 3) float64 sphere centres (x, y, z).
    radii_um : numpy.ndarray
        (n,) float64 sphere radii.
    material_ids : numpy.ndarray
        (n,) int32 material of each sphere (NMC811 particles first, then CBD blobs).
    pore_material : str
        Medium filling the pores: ``"pore"`` (air, mu = 0) or ``"electrolyte"``.
    seed : int
        Seed the tab was generated from.
    """

    width_um: float
    coating_thickness_um: float
    foil_thickness_um: float
    height_um: float
    centers_um: np.ndarray = field(repr=False)
    radii_um: np.ndarray = field(repr=False)
    material_ids: np.ndarray = field(repr=False)
    pore_material: str = "pore"
    seed: int = 0

    # ---- geometry ------------------------------------------------------------------
    @property
    def foil_y_um(self) -> tuple[float, float]:
        """(y_min, y_max) of the Al foil, um."""
        y0 = -0.5 * (self.foil_thickness_um + self.coating_thickness_um)
        return (y0, y0 + self.foil_thickness_um)

    @property
    def coating_y_um(self) -> tuple[float, float]:
        """(y_min, y_max) of the electrode coating, um."""
        y1 = self.foil_y_um[1]
        return (y1, y1 + self.coating_thickness_um)

    @property
    def bounds_um(self) -> tuple[float, float, float, float, float, float]:
        """(x0, x1, y0, y1, z0, z1) bounding box of the whole tab, um."""
        return (
            -0.5 * self.width_um,
            0.5 * self.width_um,
            self.foil_y_um[0],
            self.coating_y_um[1],
            0.0,
            self.height_um,
        )

    def boxes(self) -> np.ndarray:
        """The two homogeneous boxes (foil, coating) as a (2, 7) float64 array.

        Columns are ``x0, x1, y0, y1, z0, z1, material_id``; the coating box holds the
        pore medium, the spheres are embedded in it.
        """
        x0, x1 = -0.5 * self.width_um, 0.5 * self.width_um
        fy, cy = self.foil_y_um, self.coating_y_um
        pore = MATERIAL_IDS[self.pore_material]
        return np.array(
            [
                [x0, x1, fy[0], fy[1], 0.0, self.height_um, _AL],
                [x0, x1, cy[0], cy[1], 0.0, self.height_um, pore],
            ]
        )

    # ---- ground truth ---------------------------------------------------------------
    @property
    def n_nmc(self) -> int:
        """Number of NMC811 particles (they are the first rows of the table)."""
        return int(np.count_nonzero(self.material_ids == _NMC))

    @property
    def particles(self) -> np.ndarray:
        """Sphere table: structured array with fields x, y, z, r (um) and material (id)."""
        out = np.empty(self.radii_um.shape[0], dtype=_PARTICLE_DTYPE)
        out["x"], out["y"], out["z"] = self.centers_um.T
        out["r"] = self.radii_um
        out["material"] = self.material_ids
        return out

    def volume_fractions(self) -> dict[str, float]:
        """Volume fractions of NMC811, CBD and pore in the coating (exact, analytic)."""
        v = 4.0 / 3.0 * np.pi * self.radii_um**3
        coat = self.width_um * self.coating_thickness_um * self.height_um
        nmc = float(v[self.material_ids == _NMC].sum()) / coat
        cbd = float(v[self.material_ids == _CBD].sum()) / coat
        return {"nmc811": nmc, "cbd": cbd, "pore": 1.0 - nmc - cbd}

    def mu_integral(self, energy_keV: float) -> float:
        """Volume integral of mu over the whole tab (um^2), for projection checks."""
        mus = self._mu_for(energy_keV)
        b = self.boxes()
        box_vol = (b[:, 1] - b[:, 0]) * (b[:, 3] - b[:, 2]) * (b[:, 5] - b[:, 4])
        total = float(np.sum(box_vol * mus[b[:, 6].astype(np.int64)]))
        v = 4.0 / 3.0 * np.pi * self.radii_um**3
        total += float(np.sum(v * (mus[self.material_ids] - mus[MATERIAL_IDS[self.pore_material]])))
        return total

    def _mu_for(self, energy_keV: float) -> np.ndarray:
        return mu_table(energy_keV)

    def voxelize(
        self,
        voxel_size_um: float,
        region: tuple[float, float, float, float, float, float] | None = None,
        energy_keV: float | None = None,
    ) -> VoxelVolume:
        """Sample the phantom on a cubic grid (material ids, sphere labels, mu).

        Parameters
        ----------
        voxel_size_um : float
            Voxel edge, um.
        region : tuple of float, optional
            ``(x0, x1, y0, y1, z0, z1)`` in the tab frame, um; voxels whose centres
            fall inside are produced.  Default: :attr:`bounds_um`.
        energy_keV : float, optional
            If given, also return the mu volume (1/um) at that energy.

        Returns
        -------
        VoxelVolume
            Arrays indexed ``[z, y, x]``.
        """
        h = float(voxel_size_um)
        if h <= 0:
            raise ValueError("voxel_size_um must be > 0")
        reg = self.bounds_um if region is None else tuple(float(v) for v in region)
        lo = np.array(reg[0::2])
        hi = np.array(reg[1::2])
        # Voxel centres at lo + h/2 + i*h, as many as fit in the region.
        shape_xyz = np.maximum(1, np.floor((hi - lo) / h + 1e-9).astype(np.int64))
        origin = lo + 0.5 * h
        nx, ny, nz = (int(v) for v in shape_xyz)
        material = np.zeros((nz, ny, nx), np.uint8)
        label = np.zeros((nz, ny, nx), np.int32)
        xs = origin[0] + h * np.arange(nx)
        ys = origin[1] + h * np.arange(ny)
        zs = origin[2] + h * np.arange(nz)
        for x0, x1, y0, y1, z0, z1, m in self.boxes():
            mz = (zs >= z0) & (zs <= z1)
            my = (ys >= y0) & (ys <= y1)
            mx = (xs >= x0) & (xs <= x1)
            material[np.ix_(mz, my, mx)] = int(m)
        _voxelize_spheres(
            material,
            label,
            np.ascontiguousarray(self.centers_um, dtype=np.float64),
            np.ascontiguousarray(self.radii_um, dtype=np.float64),
            self.material_ids.astype(np.uint8),
            origin,
            h,
        )
        mu = None
        if energy_keV is not None:
            mu = self._mu_for(energy_keV).astype(np.float32)[material]
        return VoxelVolume(
            material=material,
            label=label,
            mu=mu,
            origin_um=(float(origin[0]), float(origin[1]), float(origin[2])),
            voxel_size_um=h,
            energy_keV=None if energy_keV is None else float(energy_keV),
        )


def _lognormal_diameters(rng, n, median, sigma, dmin, dmax):
    d = rng.lognormal(np.log(median), sigma, size=n)
    # Redraw out-of-range values rather than clipping, so no spike at the limits.
    bad = (d < dmin) | (d > dmax)
    while np.any(bad):
        d[bad] = rng.lognormal(np.log(median), sigma, size=int(bad.sum()))
        bad = (d < dmin) | (d > dmax)
    return d


def _draw_to_volume(rng, target_volume, median, sigma, dmin, dmax):
    """Draw diameters until their total sphere volume reaches ``target_volume``."""
    out = []
    total = 0.0
    while total < target_volume:
        mean_v = np.pi / 6.0 * median**3 * np.exp(4.5 * sigma**2)
        n = max(16, int(1.1 * (target_volume - total) / mean_v))
        d = _lognormal_diameters(rng, n, median, sigma, dmin, dmax)
        cum = total + np.cumsum(np.pi / 6.0 * d**3)
        k = int(np.searchsorted(cum, target_volume)) + 1
        out.append(d[:k])
        total = float(cum[min(k, n) - 1])
    return np.concatenate(out)


def make_tab(
    seed: int = 0,
    width_um: float = DEFAULT_TAB_WIDTH_UM,
    coating_thickness_um: float = 80.0,
    foil_thickness_um: float = 20.0,
    height_um: float = 250.0,
    n_particles: int | None = None,
    nmc_volume_fraction: float = 0.45,
    diameter_median_um: float = 5.0,
    diameter_sigma: float = 0.4,
    diameter_range_um: tuple[float, float] = (1.0, 10.0),
    cbd_fraction_of_solid: float = 0.25,
    cbd_radius_median_um: float = 0.9,
    cbd_radius_range_um: tuple[float, float] = (0.3, 2.0),
    gap_um: float = 0.0,
    pore_material: str = "pore",
    max_attempts: int = 100,
) -> ElectrodeTab:
    """Generate a seeded NMC811 electrode tab by random sequential packing.

    Parameters
    ----------
    seed : int
        RNG seed; the same seed and arguments give the same tab.
    width_um, coating_thickness_um, foil_thickness_um, height_um : float
        Tab dimensions (x width, coating and Al foil thickness along y, z height), um.
    n_particles : int, optional
        Number of NMC811 particles to try to place.  If None, diameters are drawn
        until their volume reaches ``nmc_volume_fraction`` of the coating.
    nmc_volume_fraction : float
        Target NMC811 volume fraction of the coating (used when ``n_particles`` is
        None).  Random sequential packing jams below the target (defaults give
        ~0.42 NMC, ~0.11 CBD, ~0.47 pore); the achieved values are in
        :meth:`ElectrodeTab.volume_fractions`.
    diameter_median_um, diameter_sigma : float
        Log-normal NMC secondary-particle diameters: median (um), sigma of ln(d).
    diameter_range_um : tuple of float
        Allowed diameter range, um (out-of-range draws are redrawn).
    cbd_fraction_of_solid : float
        CBD volume / (NMC + CBD) volume, typically 0.2-0.3.
    cbd_radius_median_um : float
        Median radius of the CBD blobs, um (log-normal, sigma 0.35).
    cbd_radius_range_um : tuple of float
        Allowed CBD blob radii; a blob that does not fit is shrunk down to the minimum.
    gap_um : float
        Minimum surface-to-surface gap between any two spheres (0 allows touching).
    pore_material : str
        ``"pore"`` (air, relative mu 0) or ``"electrolyte"`` (soaked electrode).
    max_attempts : int
        Random placements tried per NMC particle and size step (half of that
        for CBD blobs) before the sphere is shrunk by 15 %; NMC particles shrink
        down to the minimum diameter, CBD blobs to the minimum radius.

    Returns
    -------
    ElectrodeTab
        The phantom; spheres are fully inside the coating box and disjoint.
    """
    if pore_material not in ("pore", "electrolyte"):
        raise ValueError("pore_material must be 'pore' or 'electrolyte'")
    if not 0.0 <= cbd_fraction_of_solid < 1.0:
        raise ValueError("cbd_fraction_of_solid must be in [0, 1)")
    rng = np.random.default_rng(seed)
    dmin, dmax = diameter_range_um
    coat_volume = width_um * coating_thickness_um * height_um
    if n_particles is None:
        d = _draw_to_volume(
            rng, nmc_volume_fraction * coat_volume, diameter_median_um, diameter_sigma, dmin, dmax
        )
    else:
        d = _lognormal_diameters(
            rng, int(n_particles), diameter_median_um, diameter_sigma, dmin, dmax
        )
    r_nmc = np.sort(0.5 * d)[::-1]  # big first: RSA packs far denser that way
    y0 = -0.5 * (foil_thickness_um + coating_thickness_um) + foil_thickness_um
    lo = np.array([-0.5 * width_um, y0, 0.0])
    hi = np.array([0.5 * width_um, y0 + coating_thickness_um, height_um])
    state = np.array([rng.integers(1, 2**63 - 1)], dtype=np.uint64)

    # NMC first, then CBD placed into the remaining gaps; one grid, so all disjoint.
    nmc_v = float(np.sum(4.0 / 3.0 * np.pi * r_nmc**3))
    cbd_target = nmc_v * cbd_fraction_of_solid / (1.0 - cbd_fraction_of_solid)
    rc_lo, rc_hi = cbd_radius_range_um
    r_cbd = np.empty(0)
    if cbd_target > 0:
        r_cbd = 0.5 * _draw_to_volume(
            rng, cbd_target, 2 * cbd_radius_median_um, 0.35, 2 * rc_lo, 2 * rc_hi
        )
        r_cbd = np.sort(r_cbd)[::-1]
    radii = np.concatenate([r_nmc, r_cbd])
    shrink_min = np.concatenate([np.full(r_nmc.shape, 0.5 * dmin), np.full(r_cbd.shape, rc_lo)])
    mats = np.concatenate(
        [np.full(r_nmc.shape, _NMC, np.int32), np.full(r_cbd.shape, _CBD, np.int32)]
    )
    # CBD blobs shrink on failure, so fewer tries per size step cost little density.
    attempts = np.concatenate(
        [
            np.full(r_nmc.shape, max_attempts, np.int64),
            np.full(r_cbd.shape, max(10, max_attempts // 2), np.int64),
        ]
    )
    cell = max(1.0, 2.0 * float(np.median(radii)) if radii.size else 1.0)
    centers, rad, placed = _rsa_pack(
        radii, lo, hi, cell, float(gap_um), attempts, shrink_min, state
    )
    return ElectrodeTab(
        width_um=float(width_um),
        coating_thickness_um=float(coating_thickness_um),
        foil_thickness_um=float(foil_thickness_um),
        height_um=float(height_um),
        centers_um=centers[placed],
        radii_um=rad[placed],
        material_ids=mats[placed],
        pore_material=pore_material,
        seed=int(seed),
    )


#: Where simulators keep the tabs they packed (:func:`cached_tab`); default
#: ``$XDG_CACHE_HOME/multiscope/tabs`` (``~/.cache/multiscope/tabs``).
TAB_CACHE_ENV = "MULTISCOPE_TAB_CACHE"
# Every field, so a field added to ElectrodeTab is kept too (a file without it repacks).
_TAB_FIELDS = tuple(f.name for f in fields(ElectrodeTab))


def tab_cache_dir() -> Path:
    """``$MULTISCOPE_TAB_CACHE``, else ``$XDG_CACHE_HOME/multiscope/tabs`` (``~/.cache``)."""
    given = os.environ.get(TAB_CACHE_ENV)
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "multiscope" / "tabs"


def cached_tab(cache_dir: str | os.PathLike | None = None, **params) -> ElectrodeTab:
    """:func:`make_tab` with ``params``, kept on disk for the next simulator that needs it.

    Packing the default tab costs ~1 s of CPU, and every TXM IOC and ground-truth
    process starts by packing the same few tabs. The file's name is a hash of
    ``params``, of this module's and ``materials.py``'s source (the material ids) and of
    numpy's and numba's versions, so a change to any of them packs a new tab rather than
    loading a stale one. A file that cannot be read is packed again; a directory that
    cannot be written is only not used.

    Parameters
    ----------
    cache_dir : path-like, optional
        Default :func:`tab_cache_dir`.
    **params
        :func:`make_tab`'s keyword arguments.

    Returns
    -------
    ElectrodeTab
        Equal to ``make_tab(**params)``.
    """
    try:
        directory = Path(cache_dir) if cache_dir is not None else tab_cache_dir()
        # The material ids stored per sphere come from materials.py's table.
        sources = [Path(__file__), Path(__file__).with_name("materials.py")]
        digest = hashlib.sha256(b"".join(path.read_bytes() for path in sources))
    except (RuntimeError, OSError):  # no home directory, or no source to name it by
        return make_tab(**params)
    digest.update(repr((sorted(params.items()), np.__version__, nb.__version__)).encode())
    path = directory / f"tab-{digest.hexdigest()[:32]}.npz"
    try:
        with np.load(path, allow_pickle=False) as stored:
            values = {name: stored[name] for name in _TAB_FIELDS}
        return ElectrodeTab(
            **{name: values[name].item() for name in _TAB_FIELDS if values[name].ndim == 0},
            **{name: values[name] for name in _TAB_FIELDS if values[name].ndim > 0},
        )
    except Exception:  # noqa: BLE001 - absent, torn or foreign: pack it again
        pass
    tab = make_tab(**params)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.part")
        with open(partial, "wb") as out:
            np.savez(out, **{name: np.asarray(getattr(tab, name)) for name in _TAB_FIELDS})
        os.replace(partial, path)  # readers see the whole file or none
    except OSError:
        pass
    return tab
