"""The TXM (transmission X-ray microscope): one factory per device, named as the device.

PV names and attribute names follow ``docs/txm.md``. Devices are created without
connecting; nothing here blocks or touches hardware. The session calls
:func:`devices` with the instrument's prefix and the ring's: the beam current is
served by the storage ring's IOC, not the TXM's (decision 0009).
"""

from __future__ import annotations

from ophyd import Device

from multiscope.devices.beam import BeamCurrent
from multiscope.devices.motor import Motor
from multiscope.devices.shutter import Shutter
from multiscope.devices.txm import (
    Aperture,
    Condenser,
    Objective,
    PhaseRing,
    SampleStage,
    TXMCamera,
    TXMEnergy,
    ZonePlate,
)

__all__ = [
    "DEFAULT_BEAM_PREFIX",
    "DEFAULT_PREFIX",
    "aperture",
    "beam_current",
    "camera",
    "condenser",
    "detector_z",
    "devices",
    "energy",
    "objective",
    "phase_ring",
    "sample",
    "shutter",
    "zone_plate",
]

DEFAULT_PREFIX = "TXM:"
DEFAULT_BEAM_PREFIX = "SR:"  # the storage ring's IOC (sim_devices.ring), not the TXM's


def condenser(prefix: str = DEFAULT_PREFIX, name: str = "condenser") -> Condenser:
    """Capillary condenser: ``x``, ``y``, ``z`` (mm), ``pitch`` (mrad)."""
    return Condenser(f"{prefix}cond:", name=name)


def zone_plate(prefix: str = DEFAULT_PREFIX, name: str = "zone_plate") -> ZonePlate:
    """Zone plate: ``x``, ``y`` (um), ``z`` = p (mm); config ``diameter``, ``outermost_zone``."""
    return ZonePlate(f"{prefix}zp:", name=name)


def aperture(prefix: str = DEFAULT_PREFIX, name: str = "aperture") -> Aperture:
    """Order-sorting aperture: ``x``, ``y`` (um)."""
    return Aperture(f"{prefix}aperture:", name=name)


def phase_ring(prefix: str = DEFAULT_PREFIX, name: str = "phase_ring") -> PhaseRing:
    """Zernike phase ring: ``x``, ``y`` (um), ``inserted`` (Out/In)."""
    return PhaseRing(f"{prefix}phase_ring:", name=name)


def sample(prefix: str = DEFAULT_PREFIX, name: str = "sample") -> SampleStage:
    """Sample stage: ``x``, ``y``, ``z`` (um), ``theta`` (deg)."""
    return SampleStage(f"{prefix}sample:", name=name)


def detector_z(prefix: str = DEFAULT_PREFIX, name: str = "detector_z") -> Motor:
    """Detector distance from the sample, p + q (mm)."""
    return Motor(f"{prefix}det:z", name=name)


def objective(prefix: str = DEFAULT_PREFIX, name: str = "objective") -> Objective:
    """Scintillator objective (``2x``/``8x``) and effective pixel size (nm)."""
    return Objective(prefix, name=name)


def camera(
    prefix: str = DEFAULT_PREFIX, name: str = "camera", write_path_template: str = ""
) -> TXMCamera:
    """TXM camera; set ``write_path_template`` (or the signal) before staging."""
    return TXMCamera(prefix, name=name, write_path_template=write_path_template)


def energy(prefix: str = DEFAULT_PREFIX, name: str = "energy") -> TXMEnergy:
    """Energy (keV) moving mono, zone plate and detector together, in focus."""
    return TXMEnergy(prefix, name=name)


def shutter(prefix: str = DEFAULT_PREFIX, name: str = "shutter") -> Shutter:
    """Beam shutter."""
    return Shutter(f"{prefix}shutter:", name=name)


def beam_current(prefix: str = DEFAULT_PREFIX, name: str = "beam_current") -> BeamCurrent:
    """Ring current (mA) and status; ``prefix`` is the ring IOC's (e.g. ``SR:``)."""
    return BeamCurrent(f"{prefix}ring:", name=name)


def devices(prefix: str = DEFAULT_PREFIX, beam_prefix: str | None = None) -> dict[str, Device]:
    """Every TXM device, keyed by its name (the factory's name).

    Parameters
    ----------
    prefix : str
        The TXM IOC's prefix.
    beam_prefix : str, optional
        The ring IOC's prefix for ``beam_current`` (e.g. :data:`DEFAULT_BEAM_PREFIX`);
        None leaves ``beam_current`` out (the TXM alone, as device tests use it).
    """
    factories = (
        condenser,
        zone_plate,
        aperture,
        phase_ring,
        sample,
        detector_z,
        objective,
        camera,
        energy,
        shutter,
    )
    made = [factory(prefix) for factory in factories]
    if beam_prefix is not None:
        made.append(beam_current(beam_prefix))
    return {device.name: device for device in made}
