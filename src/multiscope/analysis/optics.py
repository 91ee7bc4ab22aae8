"""Zone-plate transmission X-ray microscope optics: thin-lens geometry and focus calibration.

Geometry (distances along the beam, mm)::

    sample ----- p ----- zone plate ------------- q ------------- detector
                         (focal length f)

The zone plate's focal length changes with energy, ``f = D * dr / lambda``, so
to stay in focus at a constant magnification ``M = q / p`` the zone plate moves
to ``p = f (M + 1) / M`` from the sample and the detector to ``p + q = f (M + 1)^2 / M``
(thin lens ``1/p + 1/q = 1/f``). A real instrument deviates from the thin lens by
a smooth, energy-dependent amount measured at a few energies: :class:`FocusCalibration`
interpolates that correction with a spline.

Examples
--------
>>> f = focal_length_mm(diameter_um=60, outermost_zone_nm=30, energy_keV=8.0)
>>> print(f"{f:.2f}")
11.61
>>> p, q = lens_distances_mm(f, magnification=50)
>>> print(abs(1 / p + 1 / q - 1 / f) < 1e-12)
True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "HC_KEV_NM",
    "wavelength_nm",
    "focal_length_mm",
    "lens_distances_mm",
    "depth_of_focus_um",
    "FocusCalibration",
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
