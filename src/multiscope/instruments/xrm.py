"""The lab X-ray microscope (XRM): one factory per device, named as the device.

PV names follow ``docs/xrm.md``; one IOC serves the instrument under one prefix.
Devices are created without connecting. The recipes (objective, binning, exposure,
source settings, pixel) are data of the plans (:data:`multiscope.plans.xrm.XRM_RECIPES`).
"""

from __future__ import annotations

from ophyd import Device

from multiscope.devices.shutter import Shutter
from multiscope.devices.xrm import (
    XRM,
    ObjectiveTurret,
    SampleChanger,
    XRaySource,
    XRMCamera,
    XRMGeometry,
    XRMSampleStage,
)

__all__ = [
    "DEFAULT_PREFIX",
    "camera",
    "devices",
    "geometry",
    "sample",
    "sample_changer",
    "shutter",
    "source",
    "turret",
    "xrm",
]

DEFAULT_PREFIX = "XRM:"


def source(prefix: str = DEFAULT_PREFIX, name: str = "source") -> XRaySource:
    """X-ray tube: ``kv``, ``power`` (W), ``filter``, ``on``, effective ``energy`` (keV)."""
    return XRaySource(prefix, name=name)


def shutter(prefix: str = DEFAULT_PREFIX, name: str = "shutter") -> Shutter:
    """The source shutter (``set("open")``/``set("close")``)."""
    return Shutter(f"{prefix}source:shutter:", name=name)


def turret(prefix: str = DEFAULT_PREFIX, name: str = "turret") -> ObjectiveTurret:
    """Objective turret: ``set("0.4x" | "4x" | "20x")``."""
    return ObjectiveTurret(prefix, name=name)


def geometry(prefix: str = DEFAULT_PREFIX, name: str = "geometry") -> XRMGeometry:
    """SOD and ODD (mm) and the pseudo axis ``pixel_size`` (um) they give."""
    return XRMGeometry(prefix, name=name)


def sample(prefix: str = DEFAULT_PREFIX, name: str = "sample") -> XRMSampleStage:
    """Sample stage: ``x``, ``y`` (centring, mm), ``z`` (mm), ``theta`` (deg)."""
    return XRMSampleStage(f"{prefix}sample:", name=name)


def sample_changer(prefix: str = DEFAULT_PREFIX, name: str = "sample_changer") -> SampleChanger:
    """Which sample is mounted."""
    return SampleChanger(prefix, name=name)


def camera(
    prefix: str = DEFAULT_PREFIX, name: str = "camera", write_path_template: str = ""
) -> XRMCamera:
    """XRM camera; set ``write_path_template`` (or the signal) before staging."""
    return XRMCamera(prefix, name=name, write_path_template=write_path_template)


def xrm(prefix: str = DEFAULT_PREFIX, name: str = "xrm", **parts) -> XRM:
    """The instrument as one object for plans; its parts are made here unless given."""
    factories = {"source": source, "shutter": shutter, "turret": turret, "geometry": geometry,
                 "sample": sample, "camera": camera, "sample_changer": sample_changer}  # fmt: skip
    made = {part: parts.get(part) or factory(prefix) for part, factory in factories.items()}
    return XRM(prefix, name=name, **made)


def devices(prefix: str = DEFAULT_PREFIX, beam_prefix: str | None = None) -> dict[str, Device]:
    """Every XRM device, keyed by its name (the factory's name).

    ``beam_prefix`` is accepted for the session's common call and unused: a lab source
    is the instrument's own.
    """
    factories = (source, shutter, turret, geometry, sample, camera, sample_changer)
    made = {device.name: device for device in (factory(prefix) for factory in factories)}
    made["xrm"] = xrm(prefix, **made)
    return made
