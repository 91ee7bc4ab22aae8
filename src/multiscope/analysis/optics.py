"""X-ray microscope optics: the TXM's zone-plate thin lens and the lab XRM's projection geometry.

Geometry (distances along the beam, mm)::

    sample ----- p ----- zone plate ------------- q ------------- detector
                         (focal length f)

The zone plate's focal length changes with energy, ``f = D * dr / lambda``, so
to stay in focus at a constant magnification ``M = q / p`` the zone plate moves
to ``p = f (M + 1) / M`` from the sample and the detector to ``p + q = f (M + 1)^2 / M``
(thin lens ``1/p + 1/q = 1/f``). A real instrument deviates from the thin lens by
a smooth, energy-dependent amount measured at a few energies: :class:`FocusCalibration`
interpolates that correction with a spline.

Lab X-ray microscope (XRM, ``xrm_*`` functions): a cone beam from a point source
magnifies the sample geometrically, ``M_geo = (SOD + ODD) / SOD`` (SOD: source-object
distance, ODD: object-detector distance); a scintillator and an optical objective
(0.4x, 4x, 20x) magnify the detector image again. The pixel size at the sample is
``detector pixel x binning / (M_geo x objective)``; see ``docs/xrm.md``.

Examples
--------
>>> print(f"{xrm_pixel_size_um(13.5, sod_mm=67.91, odd_mm=100.0, objective=0.4, binning=2):.2f}")
27.30
>>> f = focal_length_mm(diameter_um=60, outermost_zone_nm=30, energy_keV=8.0)
>>> print(f"{f:.2f}")
11.61
>>> p, q = lens_distances_mm(f, magnification=50)
>>> print(abs(1 / p + 1 / q - 1 / f) < 1e-12)
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "HC_KEV_NM",
    "wavelength_nm",
    "focal_length_mm",
    "lens_distances_mm",
    "depth_of_focus_um",
    "FocusCalibration",
    "xrm_geometric_magnification",
    "xrm_geometry_for_pixel",
    "xrm_objective",
    "xrm_odd_for_pixel_mm",
    "xrm_pixel_size_um",
    "xrm_sod_for_pixel_mm",
]

HC_KEV_NM = 1.2398419843320026  # h*c in keV nm: lambda[nm] = 1.2398 / E[keV]


def wavelength_nm(energy_keV):
    """X-ray wavelength (nm) at ``energy_keV``."""
    energy = np.asarray(energy_keV, dtype=float)
    if np.any(energy <= 0):
        raise ValueError("energy_keV must be positive")
    wavelength = HC_KEV_NM / energy
    # A plain float for a scalar energy: callers store it in PVs and metadata.
    return float(wavelength) if wavelength.ndim == 0 else wavelength


def focal_length_mm(diameter_um, outermost_zone_nm, energy_keV):
    """Zone-plate focal length ``f = D dr / lambda`` in mm.

    Parameters
    ----------
    diameter_um : float
        Zone-plate diameter D (um).
    outermost_zone_nm : float
        Outermost zone width dr (nm).
    energy_keV : float or array
        Photon energy (keV).
    """
    return diameter_um * 1e-3 * outermost_zone_nm / wavelength_nm(energy_keV)


def lens_distances_mm(focal_length, magnification):
    """Object and image distances ``(p, q)`` (mm) giving ``magnification = q / p`` in focus."""
    if np.any(np.asarray(magnification) <= 0):
        raise ValueError("magnification must be positive")
    p = focal_length * (magnification + 1.0) / magnification
    q = focal_length * (magnification + 1.0)
    return p, q


def depth_of_focus_um(resolution_nm, energy_keV):
    """Depth of focus ``4 dr^2 / lambda`` (um); 30 nm at 8 keV gives ~23 um.

    (The example of docs/stack-facts.md, domain numbers.)
    """
    return 4.0 * resolution_nm**2 / wavelength_nm(energy_keV) * 1e-3


@dataclass
class FocusCalibration:
    """Measured corrections to the thin-lens focus positions at a few energies.

    Each row is one energy at which a calibration plan found the best focus; the
    stored values are the *differences* between the measured positions and the
    thin-lens prediction, so the spline only models the instrument's smooth
    deviation, and the thin lens still carries the strong 1/E dependence.

    Parameters
    ----------
    energies_keV : sequence of float
        Strictly increasing calibration energies.
    offsets : dict of str to sequence of float
        Per axis (e.g. ``"zp_z"``, ``"det_z"``, ``"zp_x"``, ``"zp_y"``), the correction
        (mm) at each energy.
    """

    energies_keV: list[float] = field(default_factory=list)
    offsets: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self):
        energies = np.asarray(self.energies_keV, dtype=float)
        if energies.ndim != 1:
            raise ValueError("energies_keV must be one-dimensional")
        if energies.size and np.any(np.diff(energies) <= 0):
            raise ValueError("calibration energies must be strictly increasing")
        for axis, values in self.offsets.items():
            if len(values) != energies.size:
                raise ValueError(
                    f"calibration for {axis!r} has {len(values)} values "
                    f"for {energies.size} energies"
                )
        self._splines = {}
        if energies.size >= 2:
            # Imported here: scipy.interpolate costs ~1 s at a session's start-up (issue 9).
            from scipy.interpolate import make_interp_spline

            order = min(3, energies.size - 1)  # cubic once there are four energies
            self._splines = {
                axis: make_interp_spline(energies, np.asarray(values, float), k=order)
                for axis, values in self.offsets.items()
            }

    @property
    def covers(self) -> tuple[float, float] | None:
        """Energy range (keV) the calibration covers, or None when it is empty."""
        if not self.energies_keV:
            return None
        return float(self.energies_keV[0]), float(self.energies_keV[-1])

    def covers_energy(self, energy_keV) -> bool:
        """True when every energy lies within the calibrated range (empty: True)."""
        if self.covers is None:
            return True
        low, high = self.covers
        energy = np.asarray(energy_keV, dtype=float)
        return bool(np.all((energy >= low - 1e-9) & (energy <= high + 1e-9)))

    def offset(self, axis: str, energy_keV) -> float | np.ndarray:
        """Correction (mm) of ``axis`` at ``energy_keV``; 0 without calibration."""
        if axis not in self.offsets or not self.energies_keV:
            return np.zeros_like(np.asarray(energy_keV, dtype=float))[()]
        if len(self.energies_keV) == 1:
            return np.full_like(np.asarray(energy_keV, float), self.offsets[axis][0])[()]
        if not self.covers_energy(energy_keV):
            low, high = self.covers
            raise ValueError(
                f"energy {energy_keV} keV outside the focus calibration ({low}-{high} keV)"
            )
        return self._splines[axis](np.asarray(energy_keV, dtype=float))[()]

    def to_dict(self) -> dict:
        """Plain-JSON form, for metadata and for storing with a run."""
        return {
            "energies_keV": list(map(float, self.energies_keV)),
            "offsets": {k: list(map(float, v)) for k, v in self.offsets.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> FocusCalibration:
        """Inverse of :meth:`to_dict`."""
        return cls(list(data.get("energies_keV", [])), dict(data.get("offsets", {})))


# ------------------------------------------------------------------------- lab XRM


def xrm_objective(objective) -> float:
    """The optical magnification of ``objective``: a number (0.4) or a name (``"0.4x"``)."""
    text = str(objective).strip().lower().removesuffix("x")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"objective must be a magnification like 0.4 or '4x', not {objective!r}"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"objective magnification must be positive, not {objective!r}")
    return value


def _positive(name: str, value) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, not {value!r}")
    return value


def _binning(binning) -> int:
    if int(binning) != binning or int(binning) < 1:
        raise ValueError(f"binning must be a positive integer, not {binning!r}")
    return int(binning)


def xrm_geometric_magnification(sod_mm, odd_mm) -> float:
    """Cone-beam magnification ``(SOD + ODD) / SOD`` (>= 1; ODD may be 0)."""
    sod = _positive("sod_mm", sod_mm)
    odd = float(odd_mm)
    if not math.isfinite(odd) or odd < 0:
        raise ValueError(f"odd_mm must be >= 0, not {odd_mm!r}")
    return (sod + odd) / sod


def xrm_pixel_size_um(detector_pixel_um, sod_mm, odd_mm, objective, binning=1) -> float:
    """Pixel size at the sample (um) of a lab XRM.

    ``detector_pixel_um * binning / (M_geo * objective)``, ``M_geo = (SOD + ODD) / SOD``.

    Parameters
    ----------
    detector_pixel_um : float
        Physical camera pixel (um), behind the objective.
    sod_mm, odd_mm : float
        Source-object and object-detector distances (mm).
    objective : float or str
        Optical magnification (0.4, 4, 20) or its name (``"4x"``).
    binning : int
        Camera binning.
    """
    pixel = _positive("detector_pixel_um", detector_pixel_um)
    magnification = xrm_geometric_magnification(sod_mm, odd_mm) * xrm_objective(objective)
    return pixel * _binning(binning) / magnification


def _wanted_magnification(pixel_um, detector_pixel_um, objective, binning) -> float:
    """The geometric magnification a wanted pixel needs (raises if it is below 1)."""
    pixel = _positive("pixel_um", pixel_um)
    detector = _positive("detector_pixel_um", detector_pixel_um)
    objective_mag = xrm_objective(objective)
    m_geo = detector * _binning(binning) / (pixel * objective_mag)
    if m_geo <= 1.0 + 1e-9:
        largest = detector * _binning(binning) / objective_mag
        raise ValueError(
            f"a {pixel:g} um pixel needs a geometric magnification {m_geo:.4g} <= 1 with the "
            f"{objective_mag:g}x objective at binning {binning}: pixels are at most "
            f"{largest:g} um (choose a lower objective or more binning)"
        )
    return m_geo


def xrm_sod_for_pixel_mm(pixel_um, detector_pixel_um, odd_mm, objective, binning=1) -> float:
    """The SOD (mm) giving ``pixel_um`` at ODD ``odd_mm`` (the inverse of the pixel size)."""
    odd = _positive("odd_mm", odd_mm)
    return odd / (_wanted_magnification(pixel_um, detector_pixel_um, objective, binning) - 1.0)


def xrm_odd_for_pixel_mm(pixel_um, detector_pixel_um, sod_mm, objective, binning=1) -> float:
    """The ODD (mm) giving ``pixel_um`` at SOD ``sod_mm``."""
    sod = _positive("sod_mm", sod_mm)
    return sod * (_wanted_magnification(pixel_um, detector_pixel_um, objective, binning) - 1.0)


def xrm_geometry_for_pixel(
    pixel_um,
    detector_pixel_um,
    objective,
    binning=1,
    *,
    odd_mm,
    sod_limits_mm,
    odd_limits_mm,
) -> tuple[float, float]:
    """``(SOD, ODD)`` (mm) giving ``pixel_um`` within the stages' travel.

    The preferred ODD ``odd_mm`` is kept when the SOD it needs is within
    ``sod_limits_mm``; otherwise the SOD is clamped to its nearest limit and the ODD
    follows. Raises ValueError when no geometry within both travels gives the pixel.
    """
    sod_low, sod_high = (float(v) for v in sod_limits_mm)
    odd_low, odd_high = (float(v) for v in odd_limits_mm)
    m_geo = _wanted_magnification(pixel_um, detector_pixel_um, objective, binning)
    sod = _positive("odd_mm", odd_mm) / (m_geo - 1.0)
    sod = min(max(sod, sod_low), sod_high)
    odd = sod * (m_geo - 1.0)
    if not odd_low - 1e-9 <= odd <= odd_high + 1e-9:
        raise ValueError(
            f"a {float(pixel_um):g} um pixel (geometric magnification {m_geo:.4g}) is out of "
            f"reach: it needs ODD {odd:.4g} mm at SOD {sod:.4g} mm; travel is SOD "
            f"{sod_low:g}..{sod_high:g} mm, ODD {odd_low:g}..{odd_high:g} mm"
        )
    return sod, odd
