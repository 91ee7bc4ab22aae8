"""What a PFIB-SEM's detectors see of a face of a :class:`~.serial_phantom.SerialPhantom`.

* **Backscattered electrons** (two detectors acquired together): the yield rises
  with atomic number: a compound's is the mass-fraction-weighted sum of its
  elements' (Castaing's rule) from Reuter's fit of eta(Z). In an *open* pore the
  beam goes on to the pore's back wall, dimmer with its depth (``exp(-t /
  BACK_WALL_DECAY_UM)``): the through-lens TLD, topography-insensitive, collects
  those electrons too (seed 003), while the pore's walls shadow the CBS ring
  detector below the pole piece, which sees them weakly. After kintsugi the
  pores near the face hold Pt and read bright. CBS: sharp, good statistics; TLD:
  noisier, a wider spread.
* **EDS**: characteristic counts per line, Poisson, proportional to the element's
  mass fraction in the phases under the pixel (area-integrated), at the coarser EDS
  pixels, blurred by the interaction volume.
* **SIMS**: 6Li+ and 7Li+ counts, Poisson, proportional to the Li atoms per volume
  *times a matrix-dependent ionisation yield* (intensity is not concentration), at
  the SIMS pixels of its own field.

All maps take an ``origin_um`` (the grid's outer corner on the face), so drift is a
shifted origin; the truth labels of any grid come from the same phantom.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import xraydb
from scipy import ndimage

from .serial_phantom import EMPTY_LABELS, LABEL, PHASES, SerialPhantom

__all__ = [
    "EDS_LINES", "FaceState", "backscatter_coefficient", "bse_images", "eds_maps", "mean_z",
    "sims_maps",
]  # fmt: skip

AVOGADRO = 6.02214076e23
ELECTRON_C = 1.602176634e-19
# How fast a back wall's signal fades with its depth. With 1.5 um (and the detectors'
# back-wall weights below) a pore's back wall reads like binder to a classifier trained
# on a few regions, as seed 003 reports without Pt infiltration: pore and binder Dice
# fall to ~0.93 / ~0.86 (0.96 with Pt); with 0.7 um the walls were too dim to matter
# (tests/unit/test_kintsugi_segmentation.py).
BACK_WALL_DECAY_UM = 1.5
LOOKAHEAD_UM, LOOKAHEAD_STEPS = 2.0, 8  # how deep a pore's back wall is searched
LOOKAHEAD_BINNING = 4  # the back-wall search's grid, in image pixels
FACE_SUB = 3  # samples per pixel and axis of the backscatter images (area integration)
EDS_LINES = {"Co La": "Co", "Ni Ka": "Ni", "Zr La": "Zr", "Al Ka": "Al", "C Ka": "C",
             "F Ka": "F", "Pt Ma": "Pt"}  # fmt: skip
EDS_COUNTS_PER_S = 2.0e4  # per unit mass fraction at 5 kV, 1.6 nA
EDS_BLUR_UM = 0.15  # interaction volume at 5 kV (Gaussian sigma)
SIMS_ISOTOPES = {"6Li+": 0.0759, "7Li+": 0.9241}  # natural abundance
# Matrix effect: secondary-ion yield per phase, relative to LiCoO2.
SIMS_YIELD = {"lco": 1.0, "nmc811": 1.0, "llzto": 0.35}
SIMS_COUNTS_PER_S = 4.0e3  # 6Li+ + 7Li+ per pixel-second at 1 Li atom/nm^3, yield 1


@dataclass(frozen=True)
class Detector:
    """A backscatter detector: collection efficiency, back-wall weight, blur (px)."""

    efficiency: float
    back_wall: float
    blur_px: float


DETECTORS = {"cbs": Detector(0.05, 0.5, 0.5), "tld": Detector(0.012, 0.9, 1.0)}


@dataclass
class FaceState:
    """What has been done to the sample: where Pt fills the pores (kintsugi).

    ``pt_filled`` holds ``(from_um, to_um)`` depth intervals whose open pores hold Pt.
    """

    pt_filled: list[tuple[float, float]] = field(default_factory=list)

    def pt_at(self, depth_um: float) -> bool:
        return any(lo <= depth_um < hi for lo, hi in self.pt_filled)


@functools.cache
def _composition(formula: str) -> dict[str, float]:
    """Mass fractions of ``formula``'s elements (cached: every map asks per phase;
    callers must not modify the returned dict)."""
    if not formula:
        return {}
    atoms = xraydb.chemparse(formula)
    masses = {el: n * xraydb.atomic_mass(el) for el, n in atoms.items()}
    total = sum(masses.values())
    return {el: m / total for el, m in masses.items()}


def mean_z(formula: str) -> float:
    """Mass-fraction-weighted mean atomic number (0 for empty space)."""
    return sum(w * xraydb.atomic_number(el) for el, w in _composition(formula).items())


def _eta_element(z: float) -> float:
    """Backscatter coefficient of an element, eta(Z) (Reuter 1972)."""
    return -0.0254 + 0.016 * z - 1.86e-4 * z**2 + 8.3e-7 * z**3


def backscatter_coefficient(formula: str) -> float:
    """A compound's eta: its elements' eta(Z) weighted by mass fraction (Castaing)."""
    return sum(w * _eta_element(xraydb.atomic_number(el))
               for el, w in _composition(formula).items())  # fmt: skip


_ETA = np.array([backscatter_coefficient(p.formula)
                 for p in sorted(PHASES.values(), key=lambda p: p.label)])  # fmt: skip


def _face_labels(phantom, state, depth, shape, pixel_um, origin_um, sub=1):
    labels = phantom.labels(depth, shape, pixel_um, origin_um, sub=sub)
    if state.pt_at(depth):
        labels[np.isin(labels, EMPTY_LABELS)] = LABEL["pt"]
    return labels


def bse_images(
    phantom: SerialPhantom,
    depth_um: float,
    shape,
    pixel_um: float,
    origin_um,
    *,
    state: FaceState | None = None,
    dwell_us: float = 3.0,
    current_nA: float = 1.6,
    rng=None,
):  # noqa: N803 fmt: skip
    """CBS and TLD images of the face, and its truth labels.

    Returns
    -------
    dict
        ``"cbs"``, ``"tld"`` (uint16 counts), ``"labels"`` (int8, the face's phases,
        Pt where kintsugi filled a pore), ``"back_wall_um"`` (float32, depth of the
        back wall seen in each open pore pixel, NaN elsewhere).
    """
    state = state or FaceState()
    rng = rng if rng is not None else np.random.default_rng()
    # The face is integrated over each pixel (FACE_SUB x FACE_SUB samples): an edge moved
    # by a fraction of a pixel changes the signal, as at the instrument, so drift is
    # measurable below a pixel; the truth labels are the pixel centres' samples.
    ny, nx = int(shape[0]), int(shape[1])
    fine = _face_labels(phantom, state, depth_um, shape, pixel_um, origin_um, sub=FACE_SUB)
    labels = np.ascontiguousarray(fine[FACE_SUB // 2 :: FACE_SUB, FACE_SUB // 2 :: FACE_SUB])
    open_share = np.isin(fine, EMPTY_LABELS).reshape(ny, FACE_SUB, nx, FACE_SUB).mean((1, 3))
    back = np.full(labels.shape, np.nan, dtype=np.float32)
    behind = np.zeros(labels.shape, dtype=np.int8)
    open_pore = open_share > 0
    todo = open_pore.copy()
    # Back walls are searched on a grid LOOKAHEAD_BINNING times coarser: they are
    # out of focus and dim, and the search costs a face per step.
    coarse = (-(-shape[0] // LOOKAHEAD_BINNING), -(-shape[1] // LOOKAHEAD_BINNING))
    for k in range(1, LOOKAHEAD_STEPS + 1):
        if not todo.any():
            break
        t = k * LOOKAHEAD_UM / LOOKAHEAD_STEPS
        ahead = _face_labels(phantom, state, depth_um + t, coarse,
                             pixel_um * LOOKAHEAD_BINNING, origin_um)  # fmt: skip
        ahead = ahead.repeat(LOOKAHEAD_BINNING, 0).repeat(LOOKAHEAD_BINNING, 1)
        ahead = ahead[: shape[0], : shape[1]]
        found = todo & ~np.isin(ahead, EMPTY_LABELS)
        back[found], behind[found] = t, ahead[found]
        todo &= ~found
    electrons = current_nA * 1e-9 * dwell_us * 1e-6 / ELECTRON_C
    face_eta = _ETA[fine].reshape(ny, FACE_SUB, nx, FACE_SUB).mean((1, 3))
    wall_eta = open_share * np.where(open_pore & ~todo, _ETA[behind] * np.exp(
        -np.nan_to_num(back) / BACK_WALL_DECAY_UM), 0.0)  # fmt: skip
    images = {}
    for name, det in DETECTORS.items():
        mean = electrons * det.efficiency * (face_eta + det.back_wall * wall_eta)
        mean = ndimage.gaussian_filter(mean, det.blur_px)
        images[name] = np.clip(rng.poisson(mean), 0, 65535).astype(np.uint16)
    images["labels"], images["back_wall_um"] = labels, back
    return images


def _area_fractions(phantom, state, depth, shape, pixel_um, origin_um, sub=3):
    fractions = phantom.fractions(depth, shape, pixel_um, origin_um, sub=sub)
    if state.pt_at(depth):
        for label in EMPTY_LABELS:
            fractions[LABEL["pt"]] += fractions[label]
            fractions[label] = 0.0
    return fractions


def eds_maps(phantom: SerialPhantom, depth_um: float, shape, pixel_um: float, origin_um, *,
             lines=tuple(EDS_LINES), live_time_s: float = 300.0, state: FaceState | None = None,
             rng=None) -> dict[str, np.ndarray]:  # fmt: skip
    """Poisson counts per EDS line (uint16), ``live_time_s`` spread over the map."""
    state = state or FaceState()
    rng = rng if rng is not None else np.random.default_rng()
    unknown = [line for line in lines if line not in EDS_LINES]
    if unknown:
        raise ValueError(f"unknown EDS line(s) {unknown}; known: {list(EDS_LINES)}")
    fractions = _area_fractions(phantom, state, depth_um, shape, pixel_um, origin_um)
    per_pixel_s = live_time_s / (shape[0] * shape[1])
    phases = sorted(PHASES.values(), key=lambda p: p.label)
    maps = {}
    for line in lines:
        element = EDS_LINES[line]
        weight = np.array([_composition(p.formula).get(element, 0.0) for p in phases])
        mass_fraction = np.tensordot(weight, fractions, axes=1)
        mean = ndimage.gaussian_filter(mass_fraction, EDS_BLUR_UM / pixel_um)
        counts = rng.poisson(EDS_COUNTS_PER_S * per_pixel_s * mean)
        maps[line] = np.clip(counts, 0, 65535).astype(np.uint16)
    return maps


def _li_per_nm3(phase) -> float:
    atoms = xraydb.chemparse(phase.formula) if phase.formula else {}
    if "Li" not in atoms:
        return 0.0
    molar_mass = sum(n * xraydb.atomic_mass(el) for el, n in atoms.items())
    return phase.density_g_cm3 / molar_mass * AVOGADRO * atoms["Li"] * 1e-21


def sims_maps(phantom: SerialPhantom, depth_um: float, shape, pixel_um: float, origin_um, *,
              dwell_ms: float = 1.2, state: FaceState | None = None,
              rng=None) -> dict[str, np.ndarray]:  # fmt: skip
    """Poisson 6Li+ and 7Li+ counts (uint32): Li density x matrix yield x abundance."""
    state = state or FaceState()
    rng = rng if rng is not None else np.random.default_rng()
    fractions = _area_fractions(phantom, state, depth_um, shape, pixel_um, origin_um)
    phases = sorted(PHASES.values(), key=lambda p: p.label)
    signal = np.array([_li_per_nm3(p) * SIMS_YIELD.get(p.name, 1.0) for p in phases])
    li = np.tensordot(signal, fractions, axes=1)
    rate = SIMS_COUNTS_PER_S * dwell_ms * 1e-3
    return {ion: rng.poisson(rate * abundance * li).astype(np.uint32)
            for ion, abundance in SIMS_ISOTOPES.items()}  # fmt: skip
