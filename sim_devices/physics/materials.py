"""X-ray linear attenuation coefficients of the materials of an NMC811 cathode tab.

All coefficients come from tabulated reference data through :mod:`xraydb`
(``xraydb.material_mu``, Elam tables, total cross-section, result in 1/cm) and are
returned here in **1/um**, the length unit of the whole :mod:`sim_devices.physics`
package.  Energies are in **keV** at this interface (xraydb itself takes eV).

Attenuation values are *relative to the ambient air* that also fills the beam path
in a flat field: the ``"pore"`` material (air-filled, electrolyte-free pores) is
therefore exactly 0.  Tabulated data contain the K-edge jumps of Mn (6.539 keV),
Co (7.709 keV) and Ni (8.333 keV) but no near-edge fine structure (whiteline).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import xraydb

__all__ = [
    "MATERIALS",
    "MATERIAL_IDS",
    "Material",
    "attenuation_length_um",
    "material_mu",
    "mu_table",
]

_PER_CM_TO_PER_UM = 1.0e-4


@dataclass(frozen=True)
class Material:
    """A homogeneous material of the phantom.

    Parameters
    ----------
    name : str
        Short name used throughout the package.
    formula : str
        Chemical formula understood by xraydb (fractional stoichiometry allowed);
        empty for the zero-attenuation pore.
    density_g_cm3 : float
        Mass density in g/cm^3 (of the solid itself, i.e. porosity-free).
    """

    name: str
    formula: str
    density_g_cm3: float


# Carbon-binder domain: carbon black + PVDF (C2H2F2)n at 1:1 by mass.
# 50 g C -> 4.163 mol C; 50 g PVDF -> 0.781 mol C2H2F2 -> C 1.562, H 1.562, F 1.562.
_CBD_FORMULA = "C5.725H1.562F1.562"
# 1 M LiPF6 in EC:EMC 3:7 v/v per litre: EC 4.50 mol, EMC 6.79 mol, LiPF6 1 mol.
_ELECTROLYTE_FORMULA = "LiPF6C40.66H72.3O33.87"

#: Material table; the index of a name in this tuple is its integer material id.
MATERIALS: tuple[Material, ...] = (
    Material("pore", "", 0.0),
    Material("nmc811", "LiNi0.8Mn0.1Co0.1O2", 4.7),
    Material("cbd", _CBD_FORMULA, 1.8),
    Material("al", "Al", 2.70),
    Material("electrolyte", _ELECTROLYTE_FORMULA, 1.20),
)

#: Name -> integer id (also the label value in voxelised volumes).
MATERIAL_IDS: dict[str, int] = {m.name: i for i, m in enumerate(MATERIALS)}


@lru_cache(maxsize=64)
def _mu_cached(name: str, energy_ev: float) -> float:
    mat = MATERIALS[MATERIAL_IDS[name]]
    if not mat.formula:
        return 0.0
    mu_cm = xraydb.material_mu(mat.formula, energy_ev, density=mat.density_g_cm3)
    return float(mu_cm) * _PER_CM_TO_PER_UM


def _key(energy_keV: float) -> float:
    # Round to 1 meV so float noise in motor read-backs still hits the cache.
    return round(float(energy_keV) * 1000.0, 3)


def material_mu(name: str, energy_keV: float) -> float:
    """Linear attenuation coefficient of one material.

    Parameters
    ----------
    name : str
        One of ``"pore"``, ``"nmc811"``, ``"cbd"``, ``"al"``, ``"electrolyte"``.
    energy_keV : float
        Photon energy in keV (xraydb tables cover ~0.1-800 keV).

    Returns
    -------
    float
        mu in 1/um (cached per energy, rounded to 1 meV).
    """
    if name not in MATERIAL_IDS:
        raise KeyError(f"unknown material {name!r}; known: {sorted(MATERIAL_IDS)}")
    if not energy_keV > 0:
        raise ValueError(f"energy must be > 0 keV, got {energy_keV}")
    return _mu_cached(name, _key(energy_keV))


@lru_cache(maxsize=64)
def _mu_table_cached(energy_ev: float) -> tuple[float, ...]:
    return tuple(_mu_cached(m.name, energy_ev) for m in MATERIALS)


def mu_table(energy_keV: float) -> np.ndarray:
    """mu of every material, indexed by material id.

    Parameters
    ----------
    energy_keV : float
        Photon energy in keV.

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``(len(MATERIALS),)`` in 1/um; a fresh copy, so the
        caller may modify it (e.g. to substitute the pore medium).
    """
    if not energy_keV > 0:
        raise ValueError(f"energy must be > 0 keV, got {energy_keV}")
    return np.array(_mu_table_cached(_key(energy_keV)), dtype=np.float64)


def attenuation_length_um(name: str, energy_keV: float) -> float:
    """Attenuation length 1/mu (um) of a fully dense material; ``inf`` for the pore."""
    mu = material_mu(name, energy_keV)
    return float("inf") if mu == 0.0 else 1.0 / mu
