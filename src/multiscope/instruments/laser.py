"""The laser mill: one factory per device, named as the device.

PV names follow ``docs/laser.md``; one IOC serves the mill under one prefix. Devices
are created without connecting. The spot model and the tool paths
(:mod:`multiscope.analysis.laser_path`) are the plans' configuration, not PVs.
"""

from __future__ import annotations

from ophyd import Device

from multiscope.devices.laser import (
    Emission,
    Enclosure,
    LaserCut,
    LaserMill,
    LaserSource,
    Piece,
    Table,
)

__all__ = [
    "DEFAULT_PREFIX",
    "cut",
    "devices",
    "emission",
    "enclosure",
    "laser",
    "piece",
    "source",
    "table",
]

DEFAULT_PREFIX = "LASER:"


def table(prefix: str = DEFAULT_PREFIX, name: str = "table") -> Table:
    """The x-y table (um) and the focus ``z`` (um)."""
    return Table(prefix, name=name)


def emission(prefix: str = DEFAULT_PREFIX, name: str = "emission") -> Emission:
    """The laser's emission: ``set("On")`` / ``set("Off")``, and whether it fires."""
    return Emission(prefix, name=name)


def source(prefix: str = DEFAULT_PREFIX, name: str = "source") -> LaserSource:
    """Power (W) and its limits, pulses, cutting speed (mm/s), spot and kerf (um)."""
    return LaserSource(prefix, name=name)


def enclosure(prefix: str = DEFAULT_PREFIX, name: str = "enclosure") -> Enclosure:
    """The enclosure's interlock and the argon-box flag."""
    return Enclosure(prefix, name=name)


def cut(prefix: str = DEFAULT_PREFIX, name: str = "cut") -> LaserCut:
    """The path's vertices and the numbered cut along it, the instrument's cut count."""
    return LaserCut(prefix, name=name)


def piece(prefix: str = DEFAULT_PREFIX, name: str = "piece") -> Piece:
    """The piece the last cut freed, as the instrument measures it."""
    return Piece(prefix, name=name)


def laser(prefix: str = DEFAULT_PREFIX, name: str = "laser", **parts) -> LaserMill:
    """The mill as one object for plans; its parts are made here unless given."""
    factories = {"table": table, "emission": emission, "source": source,
                 "enclosure": enclosure, "cut": cut, "piece": piece}  # fmt: skip
    made = {part: parts.get(part) or factory(prefix) for part, factory in factories.items()}
    return LaserMill(prefix, name=name, **made)


def devices(prefix: str = DEFAULT_PREFIX, beam_prefix: str | None = None) -> dict[str, Device]:
    """Every laser mill device, keyed by its name (the factory's name).

    ``beam_prefix`` is accepted for the session's common call and unused.
    """
    factories = (table, emission, source, enclosure, cut, piece)
    made = {device.name: device for device in (factory(prefix) for factory in factories)}
    made["laser"] = laser(prefix, **made)
    return made
