"""What the lab X-ray microscope (XRM) sees: whole battery cells, projected analytically.

Pure physics of :mod:`sim_devices.xrm` (no PVs). Lengths are **mm** here (whole
cells), energies keV, angles degrees.

Phantoms (:func:`make_phantom`) are analytic solids with ground-truth labels:

``coin``
    A CR2032 coin cell (20 mm diameter, 3.2 mm tall): steel casing, NMC811
    cathode, separator, graphite anode, steel spacer and a wave spring (modelled as a
    steel shell of half density, the mean of its waves), the rest air.
``coin_short``
    The same cell with an internal short circuit: a contact zone of cathode material
    (0.75 mm radius, 0.3 mm tall) pressed through the separator into the anode, at
    :data:`SHORT_CENTER_MM`; ``phantom.defect_center_mm`` is the truth.
``pouch``
    A LFP/graphite pouch cell 390 um thick (40 x 50 mm): pouch foil, Cu and Al
    current collectors, graphite anode, separator, LFP cathode with spherical voids
    (15 um mean diameter, within 1 mm of the cell's centre, where the scout looks).

Every solid is *vertical*: a cylinder or a box whose axis is the rotation axis
(z), or a sphere, so a parallel-beam projection is exact and separable: a chord
profile over the detector columns times an overlap over the rows (spheres are
splatted on their few pixels). Each solid adds ``mu(material) - mu(replaces)``,
so a solid inside another (the air inside the casing, a void in the cathode)
subtracts what it replaces. One projection of 256 x 256 pixels takes ~2 ms.

Sample frame: x, y horizontal (rotating with ``theta``), z up; the stage puts the
sample point ``(x, y)`` of its ``sample:x``/``sample:y`` on the rotation axis (centring
stages on the rotation) and the height ``sample:z`` at the beam centre. A point at
``q = p - (sx, sy)`` projects to the detector column ``u = q_x cos(theta) - q_y sin(theta)``
from the axis (the geometry of :func:`multiscope.analysis.tomo.reconstruct`), row
``(z_s - z) / pixel`` below the centre.

Source and energy (documented in ``docs/xrm.md``): the tube's spectrum is replaced by
one *effective energy* ``E_eff = kV x (0.40 + 0.02 h)``, ``h`` the filter's
hardening index (LE1..LE6: 1..6, HE1..HE6: 7..12); the filter passes
``exp(-0.1 h)`` of the flux. Attenuation is ``xraydb.material_mu`` at ``E_eff``
(monochromatic: no beam hardening). Counts per binned pixel in a flat field are
``COUNTS_PER_W_S x power x exposure x exp(-0.1 h) x binning^2 x (0.4 / objective)^2``
(the scintillator's light spread over more pixels at higher optical
magnification) times a fixed gain pattern (vignetting), Poisson distributed, plus a
dark offset and Gaussian read noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import xraydb

__all__ = [
    "COUNTS_PER_W_S",
    "DARK_OFFSET",
    "DETECTOR_PIXEL_UM",
    "FILTERS",
    "LABELS",
    "OBJECTIVES",
    "PHANTOMS",
    "SENSOR_PX",
    "SHORT_CENTER_MM",
    "Box",
    "Cylinder",
    "Phantom",
    "Spheres",
    "XRMScene",
    "XRMState",
    "effective_energy_keV",
    "filter_transmission",
    "make_phantom",
    "mu_per_mm",
]

#: Camera pixel (um) behind the objective and the sensor's pixels per side (a 27.6 mm
#: CCD); frames are ``SENSOR_PX / binning`` pixels per side.
DETECTOR_PIXEL_UM = 13.5
SENSOR_PX = 2048
OBJECTIVES = {"0.4x": 0.4, "4x": 4.0, "20x": 20.0}
FILTERS = tuple(f"LE{k}" for k in range(1, 7)) + tuple(f"HE{k}" for k in range(1, 7))
COUNTS_PER_W_S = 60.0
DARK_OFFSET = 100.0
READ_NOISE = 2.0
PHANTOMS = ("coin", "coin_short", "pouch")
#: Centre (x, y, z) mm of the coin cell's short circuit (sample frame, cell centre 0).
SHORT_CENTER_MM = (1.6, -1.2, -1.2475)
LABELS = {
    "air": 0, "steel": 1, "cathode": 2, "separator": 3, "anode": 4, "spacer": 5, "spring": 6,
    "short": 7, "foil": 8, "copper": 9, "aluminium": 10, "void": 11,
}  # fmt: skip
_MATERIALS = {  # formula, density g/cm3 (porous electrodes: composite densities)
    "air": ("", 0.0),
    "steel": ("Fe0.7Cr0.18Ni0.12", 7.9),
    "spring": ("Fe0.7Cr0.18Ni0.12", 3.95),  # half the shell is steel (its waves)
    "nmc": ("LiNi0.8Mn0.1Co0.1O2", 3.2),
    "separator": ("C2H4", 0.6),
    "graphite": ("C", 1.5),
    "lfp": ("LiFePO4", 2.3),
    "foil": ("AlC2H4", 1.4),
    "copper": ("Cu", 8.96),
    "aluminium": ("Al", 2.7),
}


def filter_hardening(name: str) -> int:
    """Hardening index of a source filter: LE1..LE6 -> 1..6, HE1..HE6 -> 7..12."""
    if name not in FILTERS:
        raise ValueError(f"filter must be one of {FILTERS}, not {name!r}")
    return FILTERS.index(name) + 1


def effective_energy_keV(kv: float, filter_name: str) -> float:  # noqa: N802 - unit spelling
    """Effective photon energy ``kV x (0.40 + 0.02 h)`` of a filtered tube spectrum (keV)."""
    return float(kv) * (0.40 + 0.02 * filter_hardening(filter_name))


def filter_transmission(filter_name: str) -> float:
    """Fraction of the flux a filter passes, ``exp(-0.1 h)``."""
    return math.exp(-0.1 * filter_hardening(filter_name))


@lru_cache(maxsize=4096)
def _mu(material: str, energy_kev_rounded: float) -> float:
    formula, density = _MATERIALS[material]
    if not formula:
        return 0.0
    return float(xraydb.material_mu(formula, energy_kev_rounded * 1e3, density=density)) * 0.1


def mu_per_mm(material: str, energy_keV: float) -> float:  # noqa: N803
    """Linear attenuation (1/mm) of ``material`` at ``energy_keV`` (cached per 0.01 keV)."""
    return _mu(material, round(float(energy_keV), 2))


# -- solids ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Cylinder:
    """A vertical cylinder (axis along z) centred at ``(cx, cy)``, ``z0 <= z <= z1`` (mm)."""

    cx: float
    cy: float
    radius: float
    z0: float
    z1: float
    material: str
    label: str
    replaces: str = "air"

    def contains(self, x, y, z):
        return (
            ((x - self.cx) ** 2 + (y - self.cy) ** 2 <= self.radius**2)
            & (z >= self.z0)
            & (z <= self.z1)
        )

    def chords(self, u, cos_t, sin_t, sx, sy):
        """Chord length (mm) of the rays at columns ``u`` (mm from the axis)."""
        u_c = (self.cx - sx) * cos_t - (self.cy - sy) * sin_t
        return 2.0 * np.sqrt(np.maximum(self.radius**2 - (u - u_c) ** 2, 0.0))


@dataclass(frozen=True)
class Box:
    """A vertical box ``x0..x1, y0..y1, z0..z1`` (mm, sample frame)."""

    x0: float
    x1: float
    y0: float
    y1: float
    z0: float
    z1: float
    material: str
    label: str
    replaces: str = "air"

    def contains(self, x, y, z):
        return ((x >= self.x0) & (x <= self.x1) & (y >= self.y0) & (y <= self.y1)
                & (z >= self.z0) & (z <= self.z1))  # fmt: skip

    def chords(self, u, cos_t, sin_t, sx, sy):
        """Chord length (mm) of the rays at columns ``u``: ray ``q = u (c, -s) + w (s, c)``."""
        t_low = np.full_like(u, -np.inf)
        t_high = np.full_like(u, np.inf)
        for start, direction, low, high in (
            (u * cos_t, sin_t, self.x0 - sx, self.x1 - sx),
            (-u * sin_t, cos_t, self.y0 - sy, self.y1 - sy),
        ):
            if abs(direction) < 1e-12:
                inside = (start >= low) & (start <= high)
                t_high = np.where(inside, t_high, -np.inf)
                continue
            a, b = (low - start) / direction, (high - start) / direction
            t_low = np.maximum(t_low, np.minimum(a, b))
            t_high = np.minimum(t_high, np.maximum(a, b))
        return np.maximum(t_high - t_low, 0.0)


@dataclass(frozen=True)
class Spheres:
    """Spheres of one material: ``centers`` (n, 3) and ``radii`` (n,) in mm."""

    centers: np.ndarray
    radii: np.ndarray
    material: str
    label: str
    replaces: str = "air"

    def contains(self, x, y, z):
        inside = np.zeros(np.broadcast(x, y, z).shape, bool)
        for (cx, cy, cz), r in zip(self.centers, self.radii, strict=True):
            inside |= (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= r * r
        return inside


@dataclass
class Phantom:
    """A whole cell: solids painted in order (a later one wins in the labels)."""

    name: str
    solids: list = field(default_factory=list)
    defect_center_mm: tuple[float, float, float] | None = None
    radius_mm: float = 10.0  # horizontal extent from the centre (flats, clearances)
    height_mm: float = 3.2

    def labels(self, x, y, z) -> np.ndarray:
        """Ground-truth label (:data:`LABELS`) at sample-frame points (mm)."""
        x, y, z = np.broadcast_arrays(*(np.asarray(v, float) for v in (x, y, z)))
        out = np.zeros(x.shape, np.uint8)
        for solid in self.solids:
            out[solid.contains(x, y, z)] = LABELS[solid.label]
        return out


def _coin(short: bool) -> Phantom:
    """CR2032 (z = 0 at mid-height); layers from the can's bottom (z = -1.6 mm) up."""
    bottom = -1.6
    layers = []  # (name, material, label, radius, thickness)
    z = bottom + 0.25
    for material, label, radius, thickness in (
        ("nmc", "cathode", 7.0, 0.08),
        ("separator", "separator", 8.0, 0.025),
        ("graphite", "anode", 7.5, 0.10),
        ("steel", "spacer", 7.75, 0.5),
    ):
        layers.append(Cylinder(0.0, 0.0, radius, z, z + thickness, material, label))
        z += thickness
    top = 1.6
    solids = [
        Cylinder(0.0, 0.0, 10.0, bottom, top, "steel", "steel"),
        Cylinder(0.0, 0.0, 9.75, bottom + 0.25, top - 0.25, "air", "air", replaces="steel"),
        *layers,
        Cylinder(0.0, 0.0, 6.3, z, top - 0.25, "spring", "spring"),
        Cylinder(0.0, 0.0, 6.0, z, top - 0.25, "air", "air", replaces="spring"),
    ]
    phantom = Phantom("coin_short" if short else "coin", solids)
    if short:
        cx, cy, cz = SHORT_CENTER_MM
        # cathode material pressed through the separator into the anode
        solids.append(Cylinder(cx, cy, 0.75, cz - 0.15, cz + 0.15, "nmc", "short",
                               replaces="graphite"))  # fmt: skip
        phantom.defect_center_mm = SHORT_CENTER_MM
    return phantom


def _pouch(seed: int) -> Phantom:
    """LFP/graphite pouch cell 390 um thick along y, 40 mm wide (x), 50 mm tall (z)."""
    half_x, half_z = 20.0, 25.0
    stack = (("foil", "foil", 0.04), ("copper", "copper", 0.01), ("graphite", "anode", 0.12),
             ("separator", "separator", 0.02), ("lfp", "cathode", 0.14),
             ("aluminium", "aluminium", 0.02), ("foil", "foil", 0.04))  # fmt: skip
    y = -0.195
    solids, cathode = [], None
    for material, label, thickness in stack:
        solids.append(Box(-half_x, half_x, y, y + thickness, -half_z, half_z, material, label))
        if label == "cathode":
            cathode = (y, y + thickness)
        y += thickness
    rng = np.random.default_rng([seed, 11])
    n = 400
    radii = np.clip(rng.normal(0.0075, 0.002, n), 0.003, 0.014)
    centers = np.column_stack([
        rng.uniform(-1.0, 1.0, n),
        rng.uniform(cathode[0] + radii, cathode[1] - radii),
        rng.uniform(-1.0, 1.0, n),
    ])  # fmt: skip
    solids.append(Spheres(centers, radii, "air", "void", replaces="lfp"))
    return Phantom("pouch", solids, radius_mm=half_x, height_mm=2 * half_z)


def make_phantom(name: str, seed: int = 0) -> Phantom:
    """The phantom ``name`` (:data:`PHANTOMS`)."""
    if name == "coin":
        return _coin(short=False)
    if name == "coin_short":
        return _coin(short=True)
    if name == "pouch":
        return _pouch(seed)
    raise ValueError(f"phantom must be one of {PHANTOMS}, not {name!r}")


# -- the scene -------------------------------------------------------------------------


@dataclass(frozen=True)
class XRMState:
    """The instrument state a frame is rendered with."""

    theta_deg: float = 0.0
    sample_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    kv: float = 100.0
    power_w: float = 14.0
    filter_name: str = "LE6"
    source_on: bool = True
    shutter_open: bool = True
    objective: str = "0.4x"
    binning: int = 2
    sod_mm: float = 67.91
    odd_mm: float = 100.0

    @property
    def pixel_mm(self) -> float:
        """Pixel at the sample (mm): ``pixel x binning / (M_geo x objective)``."""
        m_geo = (self.sod_mm + self.odd_mm) / self.sod_mm
        objective = OBJECTIVES[self.objective]
        return DETECTOR_PIXEL_UM * self.binning / (m_geo * objective) * 1e-3

    @property
    def energy_keV(self) -> float:  # noqa: N802
        return effective_energy_keV(self.kv, self.filter_name)

    @property
    def flat_counts(self) -> float:
        """Mean counts per binned pixel of an open-beam frame per second of exposure."""
        if not (self.source_on and self.shutter_open):
            return 0.0
        gain = (0.4 / OBJECTIVES[self.objective]) ** 2 * self.binning**2
        return COUNTS_PER_W_S * self.power_w * filter_transmission(self.filter_name) * gain


class XRMScene:
    """Renders projections of one phantom (see the module docstring).

    Parameters
    ----------
    phantom : Phantom
    seed : int
        Seed of the gain pattern.
    """

    def __init__(self, phantom: Phantom, seed: int = 0):
        self.phantom = phantom
        self.seed = int(seed)
        self._gain: dict[tuple[int, int], np.ndarray] = {}

    def gain(self, shape: tuple[int, int]) -> np.ndarray:
        """Fixed flat-field pattern: 15 % vignetting and 1 % pixel gain scatter."""
        if shape not in self._gain:
            ny, nx = shape
            yy, xx = np.mgrid[0:ny, 0:nx]
            r2 = ((yy - (ny - 1) / 2) / ny) ** 2 + ((xx - (nx - 1) / 2) / nx) ** 2
            scatter = np.random.default_rng([self.seed, ny, nx]).normal(1.0, 0.01, shape)
            self._gain[shape] = (1.0 - 0.6 * r2) * scatter
        return self._gain[shape]

    def line_integrals(self, state: XRMState, shape: tuple[int, int]) -> np.ndarray:
        """Noise-free ``sum mu * chord`` (dimensionless) of every pixel, shape ``(ny, nx)``."""
        ny, nx = shape
        pixel = state.pixel_mm
        sx, sy, sz = state.sample_mm
        theta = math.radians(state.theta_deg)
        cos_t, sin_t = math.cos(theta), math.sin(theta)
        u = (np.arange(nx) - (nx - 1) / 2.0) * pixel
        z_centres = sz + ((ny - 1) / 2.0 - np.arange(ny)) * pixel
        energy = state.energy_keV
        out = np.zeros(shape)
        for solid in self.phantom.solids:
            delta = mu_per_mm(solid.material, energy) - mu_per_mm(solid.replaces, energy)
            if delta == 0.0:
                continue
            if isinstance(solid, Spheres):
                self._splat(out, solid, delta, pixel, (sx, sy, sz), cos_t, sin_t)
                continue
            # fraction of each row's height inside the solid (partial volume in z)
            top = np.minimum(solid.z1, z_centres + pixel / 2)
            overlap = np.clip(top - np.maximum(solid.z0, z_centres - pixel / 2), 0.0, pixel) / pixel
            rows = np.nonzero(overlap)[0]
            if rows.size == 0:
                continue
            profile = solid.chords(u, cos_t, sin_t, sx, sy)
            if not profile.any():
                continue
            out[rows] += delta * overlap[rows, None] * profile[None, :]
        return out

    @staticmethod
    def _splat(out, spheres: Spheres, delta, pixel, sample, cos_t, sin_t) -> None:
        """Add the spheres' chords on the few pixels each covers."""
        ny, nx = out.shape
        sx, sy, sz = sample
        qx, qy = spheres.centers[:, 0] - sx, spheres.centers[:, 1] - sy
        col = (qx * cos_t - qy * sin_t) / pixel + (nx - 1) / 2.0
        row = (ny - 1) / 2.0 - (spheres.centers[:, 2] - sz) / pixel
        reach = int(math.ceil(float(spheres.radii.max()) / pixel)) + 1
        offsets = np.arange(-reach, reach + 1)
        cols = np.rint(col)[:, None, None] + offsets[None, None, :]
        rows = np.rint(row)[:, None, None] + offsets[None, :, None]
        d2 = ((cols - col[:, None, None]) ** 2 + (rows - row[:, None, None]) ** 2) * pixel**2
        chord = 2.0 * np.sqrt(np.maximum(spheres.radii[:, None, None] ** 2 - d2, 0.0))
        keep = (chord > 0) & (cols >= 0) & (cols < nx) & (rows >= 0) & (rows < ny)
        rows, cols = np.broadcast_arrays(rows, cols)
        np.add.at(out, (rows[keep].astype(int), cols[keep].astype(int)), delta * chord[keep])

    def render(
        self, state: XRMState, exposure_s: float, shape: tuple[int, int], rng: np.random.Generator
    ) -> tuple[np.ndarray, dict[str, float]]:
        """One camera frame (uint16) and its attributes."""
        mean = state.flat_counts * float(exposure_s)
        frame = np.full(shape, DARK_OFFSET)
        if mean > 0:
            transmitted = mean * self.gain(shape) * np.exp(-self.line_integrals(state, shape))
            frame += rng.poisson(transmitted)
        frame += rng.normal(0.0, READ_NOISE, shape)
        attrs = {
            "theta": float(state.theta_deg),
            "sample_x": float(state.sample_mm[0]),
            "sample_y": float(state.sample_mm[1]),
            "sample_z": float(state.sample_mm[2]),
            "pixel_size_um": state.pixel_mm * 1e3,
            "energy_keV": state.energy_keV,
        }
        return np.clip(np.rint(frame), 0, 65535).astype(np.uint16), attrs
