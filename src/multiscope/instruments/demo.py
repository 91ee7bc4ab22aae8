"""The demo instrument: one factory per device, named as the device.

Devices are created without connecting; nothing here blocks or touches
hardware. The session calls :func:`devices` with the instrument's prefix.
"""

from __future__ import annotations

from ophyd import Device

from multiscope.devices.areadetector import StreamingCamera
from multiscope.devices.beam import BeamCurrent
from multiscope.devices.motor import Motor
from multiscope.devices.shutter import Shutter

__all__ = ["DEFAULT_PREFIX", "DemoCamera", "beam_current", "cam", "devices", "m1", "shutter"]

DEFAULT_PREFIX = "DEMO:"


class DemoCamera(StreamingCamera):
    """The demo camera (64 x 64 by default); frames carry ``m1`` and ``ring_current``."""


def m1(prefix: str = DEFAULT_PREFIX, name: str = "m1") -> Motor:
    """Sample motor m1 (mm, soft limits +/-10)."""
    return Motor(f"{prefix}m1", name=name)


def cam(
    prefix: str = DEFAULT_PREFIX, name: str = "cam", write_path_template: str = ""
) -> DemoCamera:
    """Demo camera; set ``write_path_template`` (or the signal) before staging."""
    return DemoCamera(prefix, name=name, write_path_template=write_path_template)


def beam_current(prefix: str = DEFAULT_PREFIX, name: str = "beam_current") -> BeamCurrent:
    """Ring current (mA) and status."""
    return BeamCurrent(f"{prefix}ring:", name=name)


def shutter(prefix: str = DEFAULT_PREFIX, name: str = "shutter") -> Shutter:
    """Beam shutter."""
    return Shutter(f"{prefix}shutter:", name=name)


def devices(prefix: str = DEFAULT_PREFIX) -> dict[str, Device]:
    """Every demo device, keyed by its name."""
    made = [m1(prefix), cam(prefix), beam_current(prefix), shutter(prefix)]
    return {device.name: device for device in made}
