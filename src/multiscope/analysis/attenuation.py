"""How thick an X-ray sample should be: attenuation lengths and the laser-milled tab's width.

A tomography sample imaged in absorption gives the best contrast-to-noise when it
transmits about ``e^-2`` (13.5 %) of the beam: its thickness along the beam is two
attenuation lengths at the imaging energy. A laser-milled tab is imaged through its
width while it turns, so the tab's *width* is that thickness (``docs/laser.md``,
"Thickness rule").

The attenuation length is ``1 / mu`` with ``mu`` the linear attenuation coefficient
of the total cross-section (photoelectric, coherent and incoherent scattering) from
:func:`xraydb.material_mu`. A porous electrode has less material in the beam: its
density is the bulk density times ``1 - porosity``.

Examples
--------
>>> round(attenuation_length_um("Cu", 8.96, 8.0), 1)
21.2
>>> round(plan_tab("NMC811", 8.0).target_width_um, 1)
95.6
>>> round(plan_tab("NMC811", 8.333).target_width_um, 1)  # sized above the Ni K edge
31.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "EDGE_MARGIN_KEV",
    "ELECTRODE_MATERIALS",
    "OPTIMAL_TRANSMISSION",
    "Material",
    "TabPlan",
    "attenuation_length_um",
    "plan_tab",
    "tab_thickness_um",
]

#: Transmission of the best contrast-to-noise in absorption: e^-2 (two attenuation lengths).
OPTIMAL_TRANSMISSION = math.exp(-2.0)
#: A tab is sized for the strongest attenuation within this many keV of its energy.
EDGE_MARGIN_KEV = 0.05


@dataclass(frozen=True)
class Material:
    """A sample material: chemical formula, bulk density (g/cm3) and typical porosity."""

    formula: str
    density_g_cm3: float
    porosity: float = 0.0


#: The electrode materials and current collectors of the project's samples.
#: Porosity: a calendered electrode's typical pore fraction; the foils are dense.
ELECTRODE_MATERIALS: dict[str, Material] = {
    "NMC811": Material("LiNi0.8Mn0.1Co0.1O2", 4.75, 0.30),
    "LFP": Material("LiFePO4", 3.6, 0.35),
    "LCO": Material("LiCoO2", 5.05, 0.30),
    "graphite": Material("C", 2.26, 0.35),
    "Al": Material("Al", 2.70, 0.0),
    "Cu": Material("Cu", 8.96, 0.0),
}


def _positive(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def _porosity(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"porosity must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"porosity must be in [0, 1), got {value}")
    return value


def attenuation_length_um(
    formula: str, density_g_cm3: float, energy_keV: float, porosity: float = 0.0
) -> float:
    """Attenuation length (um): ``1 / mu`` of ``formula`` at ``energy_keV``.

    Parameters
    ----------
    formula : str
        Chemical formula (``"LiNi0.8Mn0.1Co0.1O2"``, ``"Cu"``).
    density_g_cm3 : float
        Bulk (solid) density.
    energy_keV : float
        Photon energy.
    porosity : float
        Pore fraction in [0, 1): the density in the beam is ``density * (1 - porosity)``.

    Raises
    ------
    ValueError
        A formula xraydb cannot read, or a non-positive density or energy.
    """
    import xraydb  # reference data; imported where used (a slow import)

    density = _positive("density_g_cm3", density_g_cm3) * (1.0 - _porosity(porosity))
    energy_eV = _positive("energy_keV", energy_keV) * 1000.0
    if not isinstance(formula, str) or not formula.strip():
        raise ValueError(f"formula must be a chemical formula, got {formula!r}")
    try:
        mu_per_cm = float(xraydb.material_mu(formula, energy_eV, density=density))
    except Exception as error:  # noqa: BLE001 - xraydb raises several kinds
        raise ValueError(f"xraydb cannot read formula {formula!r}: {error}") from None
    if not mu_per_cm > 0:
        raise ValueError(f"no attenuation for {formula!r} at {energy_keV} keV")
    return 1.0e4 / mu_per_cm


def tab_thickness_um(
    formula: str,
    density_g_cm3: float,
    energy_keV: float,
    porosity: float = 0.0,
    transmission: float = OPTIMAL_TRANSMISSION,
) -> float:
    """Thickness (um) transmitting ``transmission``: ``-ln(transmission)`` attenuation lengths.

    The default, ``e^-2``, gives two attenuation lengths: the best contrast-to-noise.
    """
    transmission = float(transmission)
    if not 0.0 < transmission < 1.0:
        raise ValueError(f"transmission must be in (0, 1), got {transmission}")
    length = attenuation_length_um(formula, density_g_cm3, energy_keV, porosity)
    return -math.log(transmission) * length


@dataclass(frozen=True)
class TabPlan:
    """A tab sized for imaging at one energy.

    Attributes
    ----------
    material : str
    energy_keV : float
    porosity : float
    attenuation_length_um : float
    transmission : float
        Through the tab's width.
    target_width_um : float
        The width to image: ``-ln(transmission)`` attenuation lengths.
    kerf_um : float
        Width of material the laser removes along its path.
    programmed_width_um : float
        The nominal width to give an *uncompensated* cut so that the tab comes out at
        the target: the target plus the kerf (half a kerf lost at each edge). A
        compensated cut (the tool path offset by half a kerf) is given the target.
    sized_at_keV : float
        The energy the width is computed at: the strongest attenuation within
        ``edge_margin_keV`` of ``energy_keV`` (just above an absorption edge there).
    """

    material: str
    energy_keV: float  # noqa: N815 - unit spelling
    porosity: float
    attenuation_length_um: float
    transmission: float
    target_width_um: float
    kerf_um: float
    programmed_width_um: float
    sized_at_keV: float = 0.0  # noqa: N815 - where the attenuation is strongest (see plan_tab)


def plan_tab(
    material: str,
    energy_keV: float,
    *,
    porosity: float | None = None,
    spot_um: float = 40.0,
    kerf_fraction: float = 0.5,
    transmission: float = OPTIMAL_TRANSMISSION,
    edge_margin_keV: float = EDGE_MARGIN_KEV,  # noqa: N803 - unit spelling
) -> TabPlan:
    """The tab width for imaging ``material`` at ``energy_keV``, and what to program.

    Attenuation jumps at an absorption edge (NMC811's attenuation length falls from
    53 um to 16 um across the Ni K edge at 8.333 keV), so a tab sized just below an
    edge transmits ~0.1 % just above it, where XANES needs it. The width is sized
    for the strongest attenuation at ``energy_keV`` and just above every edge of a
    constituent within ``edge_margin_keV`` of it.

    Parameters
    ----------
    material : str
        A key of :data:`ELECTRODE_MATERIALS`.
    energy_keV : float
    porosity : float, optional
        Default: the material's typical porosity.
    spot_um : float
        The laser spot (1/e^2 diameter).
    kerf_fraction : float
        Kerf width / spot (0.5 at the lowest power that cuts: ``docs/laser.md``).
    transmission : float
        Wanted transmission through the width (default e^-2).
    edge_margin_keV : float
        Half width of the energy window sized for (default 50 eV; 0: ``energy_keV`` only).

    Raises
    ------
    ValueError
        An unknown material, or a bad number.
    """
    if material not in ELECTRODE_MATERIALS:
        raise ValueError(f"unknown material {material!r}; known: {sorted(ELECTRODE_MATERIALS)}")
    entry = ELECTRODE_MATERIALS[material]
    pores = entry.porosity if porosity is None else _porosity(porosity)
    kerf = _positive("spot_um", spot_um) * _positive("kerf_fraction", kerf_fraction)
    if kerf_fraction > 1.0:
        raise ValueError(f"kerf_fraction must be <= 1, got {kerf_fraction}")
    margin = float(edge_margin_keV)
    if not margin >= 0.0:
        raise ValueError(f"edge_margin_keV must be >= 0, got {edge_margin_keV}")
    candidates = _window_energies(entry.formula, _positive("energy_keV", energy_keV), margin)
    length, sized_at = min(
        (attenuation_length_um(entry.formula, entry.density_g_cm3, e, pores), e) for e in candidates
    )
    transmission = float(transmission)
    if not 0.0 < transmission < 1.0:
        raise ValueError(f"transmission must be in (0, 1), got {transmission}")
    target = -math.log(transmission) * length
    return TabPlan(material=material, energy_keV=float(energy_keV), porosity=pores,
                   attenuation_length_um=length, transmission=transmission,
                   target_width_um=target, kerf_um=kerf, programmed_width_um=target + kerf,
                   sized_at_keV=sized_at)  # fmt: skip


def _window_energies(formula: str, energy_keV: float, margin_keV: float) -> list[float]:  # noqa: N803
    """``energy_keV`` and 1 eV above every constituent's edge within the margin of it."""
    import xraydb

    energies = [energy_keV]
    if margin_keV == 0.0:
        return energies
    low, high = energy_keV - margin_keV, energy_keV + margin_keV
    for element in xraydb.chemparse(formula):
        for edge in xraydb.xray_edges(element).values():
            above = edge.energy / 1000.0 + 0.001
            if low <= edge.energy / 1000.0 <= high and above <= high:
                energies.append(above)
    return energies
