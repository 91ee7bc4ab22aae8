"""The plasma FIB-SEM: one factory per device, named as the device.

PV names follow ``docs/fibsem.md``; one IOC serves the chamber under one prefix.
Devices are created without connecting. The chamber's geometry and collision rules
(:mod:`multiscope.analysis.fibsem_geometry`) are configuration of the plans, not PVs.
"""

from __future__ import annotations

from ophyd import Device

from multiscope.devices.fibsem import (
    PFIBSEM,
    ChamberStage,
    EDSDetector,
    ElectronColumn,
    GasInjection,
    Insertable,
    IonColumn,
    Mill,
    SEMDetector,
    SIMSDetector,
)

__all__ = [
    "DEFAULT_PREFIX",
    "cbs",
    "devices",
    "eds",
    "eds_detector",
    "electron_column",
    "gis",
    "ion_column",
    "mill",
    "pfib",
    "sem",
    "sims",
    "stage",
]

DEFAULT_PREFIX = "PFIB:"


def stage(prefix: str = DEFAULT_PREFIX, name: str = "stage") -> ChamberStage:
    """Stage: ``x``, ``y``, ``z`` (um), ``tilt``, ``rot`` (deg), the instrument's ``pose``."""
    return ChamberStage(prefix, name=name)


def cbs(prefix: str = DEFAULT_PREFIX, name: str = "cbs") -> Insertable:
    """The concentric backscatter (CBS) ring detector's insertion."""
    return Insertable(prefix, what="cbs:insert", name=name)


def eds_detector(prefix: str = DEFAULT_PREFIX, name: str = "eds_detector") -> Insertable:
    """The EDS detector's insertion (it shares the space under the pole piece with the CBS)."""
    return Insertable(prefix, what="eds:insert", name=name)


def ion_column(prefix: str = DEFAULT_PREFIX, name: str = "ion_column") -> IonColumn:
    """Xe+ plasma column: ``voltage`` (kV), ``current`` (nA), ``beam`` (``On``/``Blanked``)."""
    return IonColumn(prefix, name=name)


def mill(prefix: str = DEFAULT_PREFIX, name: str = "mill") -> Mill:
    """Milling: the pattern, ``set(k)`` mills slice k, the instrument's slice count and depth."""
    return Mill(prefix, name=name)


def electron_column(prefix: str = DEFAULT_PREFIX, name: str = "electron_column") -> ElectronColumn:
    """SEM column: kV, current, working distance, dwell, pixel size, beam shift."""
    return ElectronColumn(prefix, name=name)


def gis(prefix: str = DEFAULT_PREFIX, name: str = "gis") -> GasInjection:
    """Pt gas injection: ``needle`` (in/out), ``heat``, ``deposit(thickness_um)``."""
    return GasInjection(prefix, name=name)


def sem(
    prefix: str = DEFAULT_PREFIX, name: str = "sem", write_path_template: str = ""
) -> SEMDetector:
    """The SEM scan: CBS and TLD frames of one scan (``SEM:cam1:``, ``SEM:HDF1:``)."""
    return SEMDetector(f"{prefix}SEM:", chamber_prefix=prefix, name=name,
                       write_path_template=write_path_template)  # fmt: skip


def eds(
    prefix: str = DEFAULT_PREFIX, name: str = "eds", write_path_template: str = ""
) -> EDSDetector:
    """EDS maps: one frame per line (``EDS:cam1:``, ``EDS:HDF1:``)."""
    return EDSDetector(f"{prefix}EDS:", chamber_prefix=prefix, name=name,
                       write_path_template=write_path_template)  # fmt: skip


def sims(
    prefix: str = DEFAULT_PREFIX, name: str = "sims", write_path_template: str = ""
) -> SIMSDetector:
    """SIMS maps: one frame per mass (``SIMS:cam1:``, ``SIMS:HDF1:``)."""
    return SIMSDetector(f"{prefix}SIMS:", chamber_prefix=prefix, name=name,
                        write_path_template=write_path_template)  # fmt: skip


def pfib(prefix: str = DEFAULT_PREFIX, name: str = "pfib", **parts) -> PFIBSEM:
    """The chamber as one object for plans; its parts are made here unless given."""
    factories = {"stage": stage, "cbs": cbs, "eds_detector": eds_detector,
                 "ion_column": ion_column, "mill": mill, "electron_column": electron_column,
                 "gis": gis, "sem": sem, "eds": eds, "sims": sims}  # fmt: skip
    made = {part: parts.get(part) or factory(prefix) for part, factory in factories.items()}
    return PFIBSEM(prefix, name=name, **made)


def devices(prefix: str = DEFAULT_PREFIX, beam_prefix: str | None = None) -> dict[str, Device]:
    """Every PFIB-SEM device, keyed by its name (the factory's name).

    ``beam_prefix`` is accepted for the session's common call and unused: the FIB-SEM
    makes its own beams.
    """
    factories = (stage, cbs, eds_detector, ion_column, mill, electron_column, gis, sem, eds, sims)
    made = {device.name: device for device in (factory(prefix) for factory in factories)}
    made["pfib"] = pfib(prefix, **made)
    return made
