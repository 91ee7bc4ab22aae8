"""Ni K-edge XANES chemistry of the NMC811 phantom: valence fields, mu(E, v), exact rendering.

Model
-----
Every NMC811 particle of an :class:`~.phantom.ElectrodeTab` gets a seeded Ni
oxidation-state (valence) field ``v(r)`` between 2+ and 4+: concentric shells of
constant valence around the particle centre (:class:`ValenceField`).  A radial
gradient is *discretised* into shells on purpose: the shell model **is** the ground
truth, so projections (nested spheres, exact) and voxelisation agree with it exactly.

Near the Ni K-edge the attenuation of NMC811 (1/um) is::

    mu(E, v) = mu_bg(E) + J(E) * [ s(E - E0(v)) + A_wl * g(E - Ew(v)) ]

* ``mu_bg`` -- non-resonant part: Li, Mn, Co, O from xraydb plus the Ni
  *below-edge* attenuation extrapolated across the edge (power law fitted to the
  xraydb Elam table below 8.333 keV);
* ``J(E)`` -- Ni K-edge jump: the power-law extrapolation of the xraydb *above-edge*
  Ni attenuation minus the below-edge one (~0.064 /um at 8.35 keV), so far from the
  edge ``mu`` equals :func:`.materials.material_mu` ("nmc811") on both sides;
* ``s`` -- arctangent step (core-hole Lorentzian broadening), half width
  :data:`EDGE_WIDTH_EV`, centred at ``E0(v) = Ew(v) - 7.5 eV``;
* ``g`` -- Gaussian whiteline of unit height, FWHM :data:`WHITELINE_FWHM_EV`,
  amplitude :data:`WHITELINE_AMPLITUDE` (normalised peak ~1.5, i.e. +50 % above the
  post-edge), centred at ``Ew(v) = 8350 eV + 1.5 eV * (v - 2)``.

Edge and whiteline shift rigidly with valence.  The *observable* whiteline of a
single valence, :func:`whiteline_energy_eV`, is the maximum of the resonant
absorbance ``J(E) [s + A_wl g]``; it lies ~0.05 eV above the Gaussian centre
``Ew(v)`` (:func:`whiteline_center_eV`) because the step and ``J(E)`` tilt the peak.

Ground truth of a projection
----------------------------
Along a ray crossing NMC of several valences (several shells, several particles) the
measured absorbance is a *sum* of spectra.  The truth whiteline of that pixel is
defined as the energy of the maximum of the **summed resonant absorbance**::

    R_ray(E) = sum_k L_k * J(E) * [ s(E - E0(v_k)) + A_wl g(E - Ew(v_k)) ]

(``L_k`` chord through the shell of valence ``v_k``), i.e. of the total absorbance
minus its smooth non-resonant background -- exactly what pre-edge subtraction and
edge-step normalisation of the measured spectrum estimate.  It is computed
numerically from the same model (:func:`true_whiteline_map`).  It is **not** the
thickness-weighted mean of the per-voxel whiteline energies (also returned, as
``mean_whiteline_eV``, for comparison): mixing shifted peaks is not linear in their
positions.  For frames integrated over each pixel's area (``supersample=s``: a
camera averages the *transmission* of its ``s x s`` sub-rays) the pixel's resonant
absorbance is ``-ln mean exp(-b - r) + ln mean exp(-b)`` over its sub-rays, what
it measures minus the same without the resonance.  Because the whiteline is wider
(FWHM 4.5 eV, 2 sigma = 3.8 eV) than the largest valence shift (3 eV), every such
sum is unimodal and its maximum lies between the smallest and largest single-valence
whiteline on the ray.

Rendering window
----------------
The model only matters near the edge; far from it the tabulated xraydb attenuation is
exact and cheaper.  :data:`XANES_WINDOW_KEV` (8.10-8.70 keV) is where renderers (the
TXM IOC) switch to :func:`project_xanes`; :func:`xanes_weight` tapers the resonant
model into the tabulated value over :data:`XANES_TAPER_KEV` (50 eV, raised cosine)
at both ends, so at the window boundary the two renderings are identical and the
spectrum is continuous (C1) across it.  Inside the taper the model differs from
xraydb by < 0.5 %, and the whiteline (~8.35 keV) is 150 eV from either taper.

Units: energies in keV at the interface unless the name says ``_eV``; lengths um;
mu 1/um.

Examples
--------
>>> from sim_devices.physics import DetectorGeometry, make_tab
>>> tab = make_tab(seed=3, width_um=12, coating_thickness_um=6, foil_thickness_um=1,
...                height_um=12, diameter_median_um=3.0, diameter_range_um=(1.5, 5.0))
>>> field = assign_valence(tab, seed=1, pattern="core-shell")
>>> det = DetectorGeometry(rows=32, cols=32, pixel_size_um=0.3)
>>> p = project_xanes(tab, field, 0.0, 8.3505, det)
>>> truth = true_whiteline_map(tab, field, det, 0.0)
>>> wl = truth.whiteline_eV[~truth.mask]
>>> bool(8350.0 < wl.min() <= wl.max() < 8353.1)
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import xraydb

from .materials import MATERIAL_IDS, MATERIALS, mu_table
from .phantom import ElectrodeTab, VoxelVolume
from .projector import DetectorGeometry, bin_pixels, project, supersampled_geometry

__all__ = [
    "EDGE_OFFSET_EV",
    "EDGE_WIDTH_EV",
    "NI_K_EDGE_KEV",
    "VALENCE_SLOPE_EV",
    "WHITELINE_AMPLITUDE",
    "WHITELINE_FWHM_EV",
    "WHITELINE_NI2_EV",
    "XANES_TAPER_KEV",
    "XANES_WINDOW_KEV",
    "TrueWhitelineMap",
    "ValenceField",
    "assign_valence",
    "bin_pixels",
    "nmc_edge_jump",
    "nmc_mu_background",
    "nmc_mu_near_edge",
    "nmc_mu_resonant",
    "mu_tables",
    "project_xanes",
    "supersampled_geometry",
    "true_whiteline_map",
    "true_whiteline_volume",
    "valence_volume",
    "whiteline_center_eV",
    "whiteline_energy_eV",
    "xanes_mu_volume",
    "xanes_weight",
]

#: Tabulated Ni K-edge (xraydb), keV.
NI_K_EDGE_KEV = 8.333
#: Gaussian centre of the whiteline for Ni2+, eV.
WHITELINE_NI2_EV = 8350.0
#: Shift of edge and whiteline per unit of Ni valence, eV.
VALENCE_SLOPE_EV = 1.5
#: Edge-step centre relative to the whiteline centre, eV.
EDGE_OFFSET_EV = -7.5
#: Half width at half maximum of the arctangent step's Lorentzian, eV.
EDGE_WIDTH_EV = 1.5
#: Full width at half maximum of the Gaussian whiteline, eV.
WHITELINE_FWHM_EV = 4.5
#: Whiteline height in units of the edge jump.
WHITELINE_AMPLITUDE = 0.55
#: Energies (keV) where renderers use the resonant model (:func:`xanes_weight` > 0).
XANES_WINDOW_KEV = (8.10, 8.70)
#: Width (keV) of the raised-cosine taper at each end of :data:`XANES_WINDOW_KEV`.
XANES_TAPER_KEV = 0.05

_NMC = MATERIAL_IDS["nmc811"]
_CBD = MATERIAL_IDS["cbd"]
_N_STD = len(MATERIALS)
_SIGMA_WL = WHITELINE_FWHM_EV / (2.0 * math.sqrt(2.0 * math.log(2.0)))
_PER_CM_TO_PER_UM = 1.0e-4


# --------------------------------------------------------------------------------------
# Attenuation model
# --------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _nmc_coefficients():
    """Power laws ``mu = c * (E / 8333 eV)^-k`` (1/um) of the NMC811 pieces from xraydb.

    Returns (c_other, k_other, c_pre, k_pre, c_post, k_post): non-Ni elements, Ni
    below the edge, Ni above the edge.  Fitted in log-log over 8.0-8.33 keV (below)
    and 8.334-8.8 keV (above); residuals are < 0.3 %.
    """
    mat = MATERIALS[_NMC]
    counts = xraydb.chemparse(mat.formula)
    masses = {el: n * xraydb.atomic_mass(el) for el, n in counts.items()}
    total = sum(masses.values())
    rho = mat.density_g_cm3 * _PER_CM_TO_PER_UM

    def fit(e_ev, mu):
        x = np.log(e_ev / 8333.0)
        k, logc = np.polyfit(x, np.log(mu), 1)
        return float(np.exp(logc)), float(-k)

    below = np.linspace(8000.0, 8332.0, 12)
    above = np.linspace(8334.0, 8800.0, 12)
    both = np.concatenate([below, above])
    other = sum(rho * masses[el] / total * xraydb.mu_elam(el, both) for el in counts if el != "Ni")
    w_ni = rho * masses["Ni"] / total
    return (
        *fit(both, other),
        *fit(below, w_ni * xraydb.mu_elam("Ni", below)),
        *fit(above, w_ni * xraydb.mu_elam("Ni", above)),
    )


def _power(c, k, e_ev):
    return c * (e_ev / 8333.0) ** (-k)


def whiteline_center_eV(valence):  # noqa: N802 - unit spelling, as in the brief
    """Centre of the whiteline Gaussian, ``8350 + 1.5 (v - 2)`` eV (model parameter)."""
    return WHITELINE_NI2_EV + VALENCE_SLOPE_EV * (np.asarray(valence, dtype=np.float64) - 2.0)


def nmc_mu_background(energy_keV):
    """Non-resonant attenuation of NMC811 (1/um): other elements + Ni below-edge law.

    Parameters
    ----------
    energy_keV : float or array_like
        Photon energy, keV.

    Returns
    -------
    numpy.ndarray
        mu in 1/um, same shape as ``energy_keV``.
    """
    e = 1000.0 * np.asarray(energy_keV, dtype=np.float64)
    c_o, k_o, c_pre, k_pre, _, _ = _nmc_coefficients()
    return _power(c_o, k_o, e) + _power(c_pre, k_pre, e)


def nmc_edge_jump(energy_keV):
    """Ni K-edge jump ``J(E)`` of NMC811 (1/um): above- minus below-edge power laws.

    >>> round(float(nmc_edge_jump(8.35)), 4)
    0.0644
    """
    e = 1000.0 * np.asarray(energy_keV, dtype=np.float64)
    _, _, c_pre, k_pre, c_post, k_post = _nmc_coefficients()
    return _power(c_post, k_post, e) - _power(c_pre, k_pre, e)


def _shape(e_ev, valence):
    """``s(E - E0(v)) + A g(E - Ew(v))`` (dimensionless), broadcasting E and v."""
    ew = whiteline_center_eV(valence)
    step = 0.5 + np.arctan((e_ev - (ew + EDGE_OFFSET_EV)) / EDGE_WIDTH_EV) / np.pi
    peak = WHITELINE_AMPLITUDE * np.exp(-0.5 * ((e_ev - ew) / _SIGMA_WL) ** 2)
    return step + peak


def nmc_mu_resonant(energy_keV, valence):
    """Resonant (Ni K-edge) part ``J(E) [s + A g]`` of NMC811 attenuation, 1/um.

    Broadcasts ``energy_keV`` against ``valence``.
    """
    e = 1000.0 * np.asarray(energy_keV, dtype=np.float64)
    return nmc_edge_jump(energy_keV) * _shape(e, valence)


def nmc_mu_near_edge(energy_keV, valence):
    """Attenuation of NMC811 with Ni valence ``valence`` near the Ni K-edge, 1/um.

    Parameters
    ----------
    energy_keV : float or array_like
        Photon energy, keV (model valid ~8.0-8.8 keV, where Mn and Co edges are far).
    valence : float or array_like
        Ni oxidation state, typically 2-4; broadcast against ``energy_keV``.

    Returns
    -------
    numpy.ndarray
        mu in 1/um.

    Examples
    --------
    >>> from sim_devices.physics import material_mu
    >>> bool(abs(nmc_mu_near_edge(8.6, 3.0) / material_mu("nmc811", 8.6) - 1) < 0.01)
    True
    >>> bool(nmc_mu_near_edge(8.3515, 3.0) > nmc_mu_near_edge(8.3515, 2.0))  # Ni3+ peak
    True
    """
    return nmc_mu_background(energy_keV) + nmc_mu_resonant(energy_keV, valence)


def whiteline_energy_eV(valence):  # noqa: N802 - unit spelling
    """Observable whiteline energy (eV) of NMC811 with a single Ni valence: the truth map.

    The maximum of the resonant absorbance ``J(E) [s + A g]`` (Newton iterations on
    its numerical derivative, converged to < 1e-6 eV).  Increases
    linearly with ``1.5 eV`` per unit valence, ~0.05 eV above
    :func:`whiteline_center_eV`.

    Parameters
    ----------
    valence : float or array_like
        Ni oxidation state.

    Returns
    -------
    numpy.ndarray or float
        Energy in eV (float for scalar input).

    Examples
    --------
    >>> e2, e4 = whiteline_energy_eV(2.0), whiteline_energy_eV(4.0)
    >>> print(f"{e2:.2f} {e4 - e2:.2f}")
    8350.05 3.00
    """
    v = np.asarray(valence, dtype=np.float64)
    out = _peak_search(whiteline_center_eV(v))
    # Only the edge-jump power law breaks rigid shifting; correct each valence on its own.
    for _ in range(2):
        out = _newton_peak(out, v)
    return float(out) if out.ndim == 0 else out


def _resonant_ev(e_ev, valence):
    return nmc_mu_resonant(e_ev * 1e-3, valence)


def _newton_peak(e_ev, valence, h=1e-3, iters=4):
    e = np.array(e_ev, dtype=np.float64)
    for _ in range(iters):
        fp = _resonant_ev(e + h, valence)
        f0 = _resonant_ev(e, valence)
        fm = _resonant_ev(e - h, valence)
        d1 = (fp - fm) / (2 * h)
        d2 = (fp - 2 * f0 + fm) / (h * h)
        e = e - d1 / np.where(d2 < 0, d2, -1.0)
    return e


def _peak_search(center):
    # Start Newton from the Gaussian centre shifted by the (rigid) offset found at v=2.
    e = np.linspace(WHITELINE_NI2_EV - 1.0, WHITELINE_NI2_EV + 1.0, 2001)
    k = int(np.argmax(_resonant_ev(e, 2.0)))
    return center + (e[k] - WHITELINE_NI2_EV)


def mu_tables(energies_keV) -> np.ndarray:
    """xraydb mu of every material at many energies at once, ``(n_energies, n_materials)``.

    Same values as :func:`.materials.mu_table` (one vectorised xraydb call per
    material instead of one per energy and material, ~100x faster for a XANES scan);
    pass a row as ``base_mu`` to :func:`project_xanes`.
    """
    e_ev = 1000.0 * np.atleast_1d(np.asarray(energies_keV, dtype=np.float64))
    out = np.zeros((e_ev.size, _N_STD))
    for m, mat in enumerate(MATERIALS):
        if mat.formula:
            mu = xraydb.material_mu(mat.formula, e_ev, density=mat.density_g_cm3)
            out[:, m] = np.asarray(mu, dtype=np.float64) * _PER_CM_TO_PER_UM
    return out


def xanes_weight(
    energy_keV: float,
    window_keV: tuple[float, float] = XANES_WINDOW_KEV,
    taper_keV: float = XANES_TAPER_KEV,
) -> float:
    """Weight of the resonant model in rendered NMC811 attenuation at ``energy_keV``.

    1 inside the window less its tapers, 0 outside the window, a raised cosine in
    between (continuous with a continuous derivative), so
    ``mu = mu_xraydb + w (mu_model - mu_xraydb)`` joins the tabulated attenuation
    smoothly at the window boundary (see the module docstring).

    Parameters
    ----------
    energy_keV : float
        Photon energy, keV.
    window_keV : tuple of float
        (low, high) window, keV.
    taper_keV : float
        Taper width at each end, keV (0: a hard switch).

    Returns
    -------
    float
        Weight in [0, 1].

    Examples
    --------
    >>> [round(xanes_weight(e), 6) for e in (8.0, 8.10, 8.125, 8.35, 8.69, 8.70)]
    [0.0, 0.0, 0.5, 1.0, 0.095492, 0.0]
    """
    e = float(energy_keV)
    lo, hi = (float(v) for v in window_keV)
    if not lo < e < hi:
        return 0.0
    taper = float(taper_keV)
    if taper <= 0:
        return 1.0
    edge = min(e - lo, hi - e) / taper
    if edge >= 1.0:
        return 1.0
    return 0.5 - 0.5 * math.cos(math.pi * edge)


# --------------------------------------------------------------------------------------
# Valence field
# --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ValenceField:
    """Piecewise-constant Ni valence in concentric shells of every NMC particle.

    Particle ``i`` (row ``i`` of the tab's sphere table, NMC particles first) is split
    into shells ``j = 0, 1, ...``: shell ``j`` is ``f[i, j+1] R_i < r <= f[i, j] R_i``
    (``f[i, 0] = 1``; the innermost used shell is a full core sphere) with valence
    ``valence[i, j]``.  Unused shells have ``f = 0``.

    Attributes
    ----------
    radius_fraction : numpy.ndarray
        (n_nmc, n_shells) float64 outer radius of each shell / particle radius,
        strictly decreasing over the used shells, zero-padded.
    valence : numpy.ndarray
        (n_nmc, n_shells) float64 Ni oxidation state of each shell (padding repeats
        the last used value).
    pattern : str
        Pattern it was generated with.
    seed : int
        Seed it was generated with.
    """

    radius_fraction: np.ndarray = field(repr=False)
    valence: np.ndarray = field(repr=False)
    pattern: str = "radial"
    seed: int = 0

    @property
    def n_particles(self) -> int:
        """Number of NMC particles covered."""
        return int(self.valence.shape[0])

    @property
    def valence_range(self) -> tuple[float, float]:
        """(min, max) valence over all used shells."""
        used = self.radius_fraction > 0
        if not np.any(used):
            return (float("nan"), float("nan"))
        return (float(self.valence[used].min()), float(self.valence[used].max()))

    def valence_at(self, particle: np.ndarray, rho: np.ndarray) -> np.ndarray:
        """Valence at normalised radius ``rho = r / R`` (0-1) inside NMC particle ``particle``.

        Parameters
        ----------
        particle : numpy.ndarray
            Integer particle indices (0-based, NMC rows of the tab).
        rho : numpy.ndarray
            Distance from the particle centre over its radius, same shape.

        Returns
        -------
        numpy.ndarray
            float64 valence.
        """
        p = np.asarray(particle, dtype=np.int64)
        f = self.radius_fraction[p]  # (..., n_shells)
        # Shell j holds f[j+1] < rho <= f[j]: count shells whose outer radius reaches rho.
        j = np.sum(f >= np.asarray(rho, dtype=np.float64)[..., None], axis=-1) - 1
        j = np.clip(j, 0, f.shape[-1] - 1)
        return np.take_along_axis(self.valence[p], j[..., None], axis=-1)[..., 0]


_PATTERNS = ("uniform", "core-shell", "radial", "mixed")


def assign_valence(
    tab: ElectrodeTab,
    seed: int = 0,
    pattern: str = "radial",
    n_shells: int = 6,
    valence_range: tuple[float, float] = (2.0, 4.0),
    core_fraction_range: tuple[float, float] = (0.4, 0.8),
    gradient_exponent_range: tuple[float, float] = (1.0, 3.0),
) -> ValenceField:
    """Draw a seeded Ni valence field for every NMC particle of ``tab``.

    Parameters
    ----------
    tab : ElectrodeTab
        The phantom (its first :attr:`~ElectrodeTab.n_nmc` spheres are NMC).
    seed : int
        RNG seed; same seed, tab and arguments give the same field.
    pattern : {"radial", "core-shell", "uniform", "mixed"}
        ``"radial"``: ``v(rho) = v_c + (v_s - v_c) rho^p`` (random core and surface
        valences, exponent ``p``) sampled at the mid radius of ``n_shells``
        equal-thickness shells; ``"core-shell"``: a core sphere of radius
        ``f R`` (``f`` in ``core_fraction_range``) and one shell; ``"uniform"``: one
        valence per particle; ``"mixed"``: one of the three per particle.
    n_shells : int
        Shells of the radial pattern (>= 1).
    valence_range : tuple of float
        Valences are drawn uniformly in this range (Ni2+ ... Ni4+).
    core_fraction_range, gradient_exponent_range : tuple of float
        Ranges of the core radius fraction and of the radial exponent.

    Returns
    -------
    ValenceField

    Examples
    --------
    >>> from sim_devices.physics import make_tab
    >>> tab = make_tab(seed=0, height_um=10.0)
    >>> f = assign_valence(tab, seed=2, pattern="core-shell")
    >>> f.valence.shape == (tab.n_nmc, 6) and 2.0 <= f.valence_range[0]
    True
    """
    if pattern not in _PATTERNS:
        raise ValueError(f"pattern must be one of {_PATTERNS}, got {pattern!r}")
    if n_shells < 1:
        raise ValueError("n_shells must be >= 1")
    vlo, vhi = (float(v) for v in valence_range)
    if not vlo <= vhi:
        raise ValueError("valence_range must be (low, high)")
    n = tab.n_nmc
    width = max(n_shells, 2)
    rng = np.random.default_rng(seed)
    # Draw every random number for every particle so patterns do not change the others.
    v_core = rng.uniform(vlo, vhi, n)
    v_surf = rng.uniform(vlo, vhi, n)
    f_core = rng.uniform(*core_fraction_range, n)
    expo = rng.uniform(*gradient_exponent_range, n)
    kind = rng.integers(0, 3, n)
    if pattern != "mixed":
        kind[:] = ("uniform", "core-shell", "radial").index(pattern)

    frac = np.zeros((n, width))
    val = np.zeros((n, width))
    outer = 1.0 - np.arange(n_shells) / n_shells
    mid = 1.0 - (np.arange(n_shells) + 0.5) / n_shells
    for i in range(n):
        if kind[i] == 0:
            frac[i, 0], val[i, :] = 1.0, v_core[i]
        elif kind[i] == 1:
            frac[i, :2] = (1.0, f_core[i])
            val[i, 0], val[i, 1:] = v_surf[i], v_core[i]
        else:
            frac[i, :n_shells] = outer
            val[i, :n_shells] = v_core[i] + (v_surf[i] - v_core[i]) * mid ** expo[i]
            val[i, n_shells:] = val[i, n_shells - 1]
    return ValenceField(radius_fraction=frac, valence=val, pattern=pattern, seed=int(seed))


# --------------------------------------------------------------------------------------
# Exact projection: nested spheres
# --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _ShellTab:
    tab: ElectrodeTab  # spheres: CBD blobs (id cbd) + nested shell spheres (ids >= _N_STD)
    n_shell_spheres: int
    valence: np.ndarray  # valence of the shell each nested sphere starts
    valence_outside: np.ndarray  # valence just outside it (NaN for the outer surface)


def _shell_tab(tab: ElectrodeTab, vf: ValenceField) -> _ShellTab:
    if vf.n_particles != tab.n_nmc:
        raise ValueError(f"valence field has {vf.n_particles} particles, tab {tab.n_nmc}")
    n = tab.n_nmc
    used = vf.radius_fraction[:n] > 0
    part, shell = np.nonzero(used)
    radii = tab.radii_um[part] * vf.radius_fraction[part, shell]
    centers = tab.centers_um[part]
    val = vf.valence[part, shell]
    outside = np.where(shell > 0, vf.valence[part, np.maximum(shell - 1, 0)], np.nan)
    other = tab.material_ids != _NMC
    ns = radii.size
    ids = np.concatenate(
        [_N_STD + np.arange(ns, dtype=np.int32), tab.material_ids[other].astype(np.int32)]
    )
    shell_tab = ElectrodeTab(
        width_um=tab.width_um,
        coating_thickness_um=tab.coating_thickness_um,
        foil_thickness_um=tab.foil_thickness_um,
        height_um=tab.height_um,
        centers_um=np.concatenate([centers, tab.centers_um[other]]),
        radii_um=np.concatenate([radii, tab.radii_um[other]]),
        material_ids=ids,
        pore_material=tab.pore_material,
        seed=tab.seed,
    )
    return _ShellTab(shell_tab, ns, val, outside)


_SHELL_CACHE: dict[tuple[int, int], tuple[ElectrodeTab, ValenceField, _ShellTab]] = {}


def _cached_shell_tab(tab: ElectrodeTab, vf: ValenceField) -> _ShellTab:
    key = (id(tab), id(vf))
    hit = _SHELL_CACHE.get(key)
    # Keep references so the ids cannot be recycled while the entry lives.
    if hit is not None and hit[0] is tab and hit[1] is vf:
        return hit[2]
    st = _shell_tab(tab, vf)
    if len(_SHELL_CACHE) > 16:
        _SHELL_CACHE.clear()
    _SHELL_CACHE[key] = (tab, vf, st)
    return st


def _shell_mu(st: _ShellTab, base: np.ndarray, mu_of_valence, outer_reference: float):
    """Per-material mu array where nested sphere k carries ``mu(v_k) - mu(v_outside)``.

    The projector adds ``mus[id] - mus[pore]`` per sphere, so the pore value is added
    back; the outermost sphere of a particle displaces ``outer_reference``.
    """
    mu_in = mu_of_valence(st.valence)
    mu_out = np.where(
        np.isnan(st.valence_outside),
        outer_reference,
        mu_of_valence(np.nan_to_num(st.valence_outside, nan=2.0)),
    )
    pore = base[MATERIAL_IDS[_pore_name(st)]]
    return np.concatenate([base, mu_in - mu_out + pore])


def _pore_name(st: _ShellTab) -> str:
    return st.tab.pore_material


def project_xanes(
    tab: ElectrodeTab,
    valence_field: ValenceField,
    angle_rad: float,
    energy_keV: float,
    detector: DetectorGeometry,
    center_um: tuple[float, float, float] | None = None,
    base_mu: np.ndarray | None = None,
    weight: float = 1.0,
    supersample: int = 1,
) -> np.ndarray:
    """Exact line integrals of mu through the tab with the valence-dependent NMC model.

    Each NMC particle is rendered as nested spheres (one per valence shell) whose mu
    differences the exact projector of :func:`.projector.project` sums; boxes, CBD
    and pores use the xraydb table.

    Parameters
    ----------
    tab : ElectrodeTab
        The phantom.
    valence_field : ValenceField
        From :func:`assign_valence` for this tab.
    angle_rad, energy_keV, detector, center_um
        As for :func:`.projector.project` (energy in keV, centre in um; add drift to
        ``center_um``).
    base_mu : numpy.ndarray, optional
        mu of the standard materials at ``energy_keV`` (a row of :func:`mu_tables`);
        default :func:`.materials.mu_table` (slow on a cache miss: ~0.1 s).
    weight : float
        Blend of the NMC attenuation: ``base_mu[nmc] + weight * (model - base_mu[nmc])``
        (:func:`xanes_weight`; 1: the model, 0: the tabulated value everywhere,
        i.e. exactly :func:`.projector.project`).
    supersample : int
        Sub-rays per pixel and axis: ``s > 1`` integrates each pixel's transmission
        over its area as a camera does (:func:`.projector.project`); the matching
        truth is ``true_whiteline_map(..., supersample=s)``.

    Returns
    -------
    numpy.ndarray
        float32 (rows, cols) line integrals (absorbance, dimensionless).
    """
    st = _cached_shell_tab(tab, valence_field)
    base = mu_table(energy_keV) if base_mu is None else np.asarray(base_mu, dtype=np.float64)
    pore_mu = base[MATERIAL_IDS[tab.pore_material]]
    w = float(weight)
    if w == 1.0:

        def mu_of(v):
            return nmc_mu_near_edge(energy_keV, v)

    else:
        tabulated = base[_NMC]

        def mu_of(v):
            model = nmc_mu_near_edge(energy_keV, v)
            return tabulated + w * (model - tabulated)

    mus = _shell_mu(st, base, mu_of, pore_mu)
    return project(
        st.tab, angle_rad, energy_keV, detector, center_um=center_um, mu=mus,
        supersample=supersample,
    )  # fmt: skip


def _project_shell_quantity(st, angle_rad, detector, center_um, q_of_valence):
    """Line integral of a per-valence quantity over NMC only (everything else 0)."""
    base = np.zeros(_N_STD)
    mus = _shell_mu(st, base, q_of_valence, 0.0)
    # Pore value 0 here, so a soaked tab's electrolyte does not leak in.
    return project(st.tab, angle_rad, 8.35, detector, center_um=center_um, mu=mus)


@dataclass(frozen=True, eq=False)
class TrueWhitelineMap:
    """Ground truth of a 2D XANES projection (see the module docstring).

    Attributes
    ----------
    whiteline_eV : numpy.ndarray
        (rows, cols) float64 whiteline energy of the summed resonant absorbance along
        each ray, eV; NaN where :attr:`mask`.
    mean_whiteline_eV : numpy.ndarray
        Thickness-weighted mean of the per-voxel whiteline energies, eV (NaN where
        masked); differs from :attr:`whiteline_eV` where valences mix.
    nmc_thickness_um : numpy.ndarray
        (rows, cols) float64 NMC chord length along each ray, um.
    mask : numpy.ndarray
        bool, True for rays with NMC thickness <= ``min_thickness_um`` (default:
        rays that cross no NMC at all).
    """

    whiteline_eV: np.ndarray  # noqa: N815 - unit spelling
    mean_whiteline_eV: np.ndarray  # noqa: N815
    nmc_thickness_um: np.ndarray
    mask: np.ndarray


def true_whiteline_map(
    tab: ElectrodeTab,
    valence_field: ValenceField,
    detector: DetectorGeometry,
    angle_rad: float = 0.0,
    center_um: tuple[float, float, float] | None = None,
    step_eV: float = 0.05,
    min_thickness_um: float = 0.0,
    supersample: int = 1,
) -> TrueWhitelineMap:
    """Ground-truth whiteline map of a projection, computed from the same model.

    The summed resonant absorbance ``R_ray(E)`` is rendered exactly (nested-sphere
    projector) on a grid of step ``step_eV`` spanning the whiteline energies present,
    the grid maximum is refined by a 3-point parabola (error < 1e-3 eV for the
    default step; unimodality is guaranteed, see the module docstring).

    Parameters
    ----------
    tab, valence_field : ElectrodeTab, ValenceField
        Phantom and its chemistry.
    detector : DetectorGeometry
        Detector grid (or an object with a ``geometry``).
    angle_rad : float
        Rotation angle, rad.
    center_um : tuple of float, optional
        As for :func:`.projector.project` (the drift-free reference position).
    step_eV : float
        Energy grid step of the numerical maximum search, eV.
    min_thickness_um : float
        Rays with NMC thickness <= this are masked (default 0: no NMC at all).
    supersample : int
        For pixel-area-integrated frames (``project_xanes(..., supersample=s)``,
        :func:`supersampled_geometry`): the truth spectrum of a pixel is then the
        resonant part of what it measures, ``-ln mean exp(-b - r) + ln mean exp(-b)``
        over its ``s x s`` sub-rays (``r`` resonant, ``b`` all other absorbance of
        the sub-ray at that energy), i.e. the pixel's absorbance minus the same
        without the Ni resonance.  Not the mean of ``r``: where sub-rays differ in
        thickness (particle rims, the laser-cut edge) the thinner ones transmit more
        and weigh more.  Thickness and ``mean_whiteline_eV``: means over sub-rays.

    Returns
    -------
    TrueWhitelineMap
    """
    st = _cached_shell_tab(tab, valence_field)
    geo = getattr(detector, "geometry", detector)
    s = int(supersample)
    fine = supersampled_geometry(geo, s)

    def proj(q):
        img = _project_shell_quantity(st, angle_rad, fine, center_um, q).astype(np.float64)
        return bin_pixels(img, s)

    thick = proj(lambda v: np.ones_like(np.asarray(v, float)))
    mask = ~(thick > min_thickness_um)
    rows, cols = thick.shape
    wl = np.full((rows, cols), np.nan)
    mean = np.full((rows, cols), np.nan)
    if np.all(mask):
        return TrueWhitelineMap(wl, mean, thick, mask)
    vmin, vmax = valence_field.valence_range
    e_lo = float(whiteline_energy_eV(vmin)) - 2 * step_eV
    e_hi = float(whiteline_energy_eV(vmax)) + 2 * step_eV
    grid = np.arange(e_lo, e_hi + step_eV, step_eV)
    good = ~mask
    spectra = np.empty((grid.size, int(good.sum())), np.float64)
    base = mu_tables(grid * 1e-3) if s > 1 else None
    for k, e in enumerate(grid):
        if s == 1:
            spectra[k] = proj(lambda v, e=e: _resonant_ev(e, v))[good]
            continue
        # A camera pixel averages its sub-rays' transmission, so its resonant
        # absorbance is -ln mean(exp(-b - r)) + ln mean(exp(-b)) (b: the rest of each
        # sub-ray at this energy): thin sub-rays weigh more than in the mean of r.
        r = _project_shell_quantity(
            st, angle_rad, fine, center_um, lambda v, e=e: _resonant_ev(e, v)
        )
        mus = base[k].copy()
        mus[_NMC] = float(nmc_mu_background(e * 1e-3))
        b = project(tab, angle_rad, e * 1e-3, fine, center_um=center_um, mu=mus)
        weight = np.exp(-b.astype(np.float64))
        seen = bin_pixels(weight * np.exp(-r.astype(np.float64)), s) / bin_pixels(weight, s)
        spectra[k] = -np.log(seen)[good]
    kmax = np.clip(np.argmax(spectra, axis=0), 1, grid.size - 2)
    cols_ = np.arange(spectra.shape[1])
    ym, y0, yp = spectra[kmax - 1, cols_], spectra[kmax, cols_], spectra[kmax + 1, cols_]
    den = ym - 2 * y0 + yp
    frac = np.where(den < 0, 0.5 * (ym - yp) / np.where(den < 0, den, -1.0), 0.0)
    wl[good] = grid[kmax] + step_eV * np.clip(frac, -1.0, 1.0)
    e_sum = proj(whiteline_energy_eV)
    mean[good] = e_sum[good] / thick[good]
    return TrueWhitelineMap(wl, mean, thick, mask)


# --------------------------------------------------------------------------------------
# Voxel route (3D truth, small test volumes)
# --------------------------------------------------------------------------------------
def valence_volume(
    tab: ElectrodeTab,
    valence_field: ValenceField,
    voxel_size_um: float,
    region: tuple[float, float, float, float, float, float] | None = None,
) -> tuple[VoxelVolume, np.ndarray]:
    """Voxelise the phantom and its Ni valence (point-sampled at voxel centres).

    Parameters
    ----------
    tab, valence_field : ElectrodeTab, ValenceField
        Phantom and chemistry.
    voxel_size_um : float
        Cubic voxel edge, um.
    region : tuple of float, optional
        ``(x0, x1, y0, y1, z0, z1)`` in the tab frame, um (see
        :meth:`ElectrodeTab.voxelize`).

    Returns
    -------
    vox : VoxelVolume
        Material ids and sphere labels, indexed ``[z, y, x]``.
    valence : numpy.ndarray
        float64 valence per voxel, NaN outside NMC.
    """
    vox = tab.voxelize(voxel_size_um, region=region)
    valence = np.full(vox.material.shape, np.nan)
    sel = (vox.label > 0) & (vox.label <= tab.n_nmc)
    k, j, i = np.nonzero(sel)
    part = vox.label[k, j, i] - 1
    h = vox.voxel_size_um
    ox, oy, oz = vox.origin_um
    xyz = np.stack([ox + i * h, oy + j * h, oz + k * h], axis=-1)
    rho = np.linalg.norm(xyz - tab.centers_um[part], axis=-1) / tab.radii_um[part]
    valence[k, j, i] = valence_field.valence_at(part, rho)
    return vox, valence


def true_whiteline_volume(
    tab: ElectrodeTab,
    valence_field: ValenceField,
    voxel_size_um: float,
    region: tuple[float, float, float, float, float, float] | None = None,
) -> np.ndarray:
    """Per-voxel ground-truth whiteline energy (eV), NaN outside NMC (3D XANES truth)."""
    _, valence = valence_volume(tab, valence_field, voxel_size_um, region)
    out = np.full(valence.shape, np.nan)
    ok = np.isfinite(valence)
    out[ok] = whiteline_energy_eV(valence[ok])
    return out


def xanes_mu_volume(vox: VoxelVolume, valence: np.ndarray, energy_keV: float) -> np.ndarray:
    """mu volume (1/um, float32) at ``energy_keV`` from :func:`valence_volume` output."""
    mu = mu_table(energy_keV).astype(np.float32)[vox.material]
    ok = np.isfinite(valence)
    mu[ok] = nmc_mu_near_edge(energy_keV, valence[ok]).astype(np.float32)
    return mu
