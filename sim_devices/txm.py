"""The simulated transmission X-ray microscope (TXM) IOC: real projections of an NMC811 tab.

Every frame is a physics rendering (:mod:`sim_devices.physics`) of a seeded
electrode-tab phantom, built once at start-up, as the motors place it::

    line integrals  p  = project(tab, theta, E, geometry(pixel, axis column), center)
    counts             = render_frame(p, exposure, rng, model(I0), defocus, E)
    I0                 = photons/px/s * ring/400 mA * illumination(alignment)

Geometry and optics (see ``docs/txm.md``; lengths along the beam in mm)

* The sample stage ``sample:x/y/z`` (um) sits *under* the rotation stage: it moves
  sample and rotation axis together in the lab frame. ``x`` is across the beam
  (the image and the rotation-axis column shift by ``x / pixel``), ``y`` along the
  beam (towards the zone plate: it changes the object distance, i.e. the focus),
  ``z`` vertical (up; the image moves up). At ``sample:z = 0`` the middle of the
  tab is on the detector centre row.
* **Sample out:** the tab's footprint is at most ~65 um from the rotation axis and
  the field of view is ~33 um either side of the centre, so any
  ``|sample:x| >= SAMPLE_OUT_UM`` (200 um) gives open-beam (flat) frames at every
  angle. Nothing is faked: the projection simply misses the tab.
* Object distance ``p = zp:z - sample:y/1000``, image distance
  ``q = det:z - zp:z``, magnification ``M = q / p``, effective pixel
  ``6.5 um * binning / (M * objective)``. Zone plate ``D = 120 um``,
  ``dr = 30 nm``: ``f = D dr / lambda`` (23.2 mm at 8 keV). The default
  positions put the sample in focus at ``M = 50`` and 8 keV (130 nm pixels at
  binning 2 with the 2x objective, a 66 um field of view).
* Defocus ``p - p_focus(q)`` blurs the image beyond half the depth of focus
  (23 um at 8 keV); ``truth:focus_zp_z`` is the zone-plate position in focus for
  the current energy, ``det:z`` and ``sample:y``.
* The rotation axis sits ``--axis-offset-px`` pixels (at the start-up optics)
  right of the detector centre; the offset is a physical distance, so it scales
  with the pixel size. ``truth:axis_offset_px`` is the axis column minus the
  centre column at ``sample:x = 0`` (the x stage carries the axis: add
  ``sample:x / pixel``), including the effect of ``zp:x``.
* A zone-plate offset ``zp:x/y`` moves the field of view by ``(1 + 1/M)`` times
  the offset (the image moves as if the sample moved by minus that: ``+zp:x``
  moves the image towards smaller columns, ``+zp:y`` towards larger rows) and,
  like a misaligned condenser or order-sorting aperture, reduces the illumination
  (Gaussian fall-off; every axis is aligned at 0).
* **Zone-plate travel tilt** (``--zp-tilt-mrad X Y``, default 0 0): the ``zp:z``
  stage is not parallel to the optical axis, so the zone plate's effective
  transverse position is ``zp:x/y + tilt * (zp:z - ZP_TILT_REFERENCE_Z_MM)`` (um;
  the reference is the in-focus ``zp:z`` at the Ni K-edge, M = 50) and refocusing
  over an energy scan walks the image across the detector. It acts wherever
  ``zp:x/y`` act (image shift, rotation-axis column, illumination);
  ``truth:zp_shift_x_px`` / ``truth:zp_shift_y_px`` show the resulting image
  shift (px, +columns / +rows, ``scipy.ndimage.shift`` sense) of the whole
  effective offset, ``zp:x/y`` included.
* The Zernike phase ring, when in and aligned, adds edge contrast with a halo
  (a high-pass of the projected thickness) and absorbs 25 % of the beam.
* ``theta``, ``sample:x/y/z`` and ``mono:energy`` are evaluated at the middle of
  each exposure from the motors' trajectories, so fly scans record the angle of
  every frame exactly (HDF5 attribute ``theta``).
* **Position-synchronised start:** the rotation's position compare
  (``sample:rotation_trigger:Position``) fires the camera's start pulse when
  ``sample:theta`` passes that angle increasing; a camera in ``TriggerMode``
  External (armed by Acquire) starts its frame clock at the exact crossing time,
  so a fly scan's first frame is where the plan put it, whatever the client's or
  the network's latency.
* Shutter closed or no ring current: dark frames (offset + dark current + read
  noise). The ring current comes from the ring IOC (``sim_devices.ring``, its own
  process as at a facility; ``--ring-prefix``/``--ring-port``) over Channel Access and
  is shown as ``beam:ring_current``; without ``--ring-prefix`` the ring holds its fill
  current, and while the ring IOC is unreachable its last value is kept (a dead ring
  IOC does not dump the beam).
* **XANES chemistry** (``docs/txm.md``, "XANES chemistry and truth"): every NMC
  particle carries a seeded Ni oxidation-state field (``--valence-pattern``,
  ``--valence-seed``; :func:`sim_devices.physics.xanes.assign_valence`). Inside the
  XANES window (8.10-8.70 keV) frames are rendered with the Ni K-edge model (edge
  step and whiteline shifting 1.5 eV per valence unit, on the non-resonant
  attenuation of the other elements), tapered into the tabulated xraydb attenuation
  over 50 eV at both ends so the two renderings meet exactly at the boundary;
  outside the window, xraydb as before.
* **Energy drift**: at every energy inside the XANES window the sample sits
  elsewhere in the image by a seeded jump (``--energy-drift-px`` rms per axis, at
  most ``--energy-drift-max-px``), a pure function of seed and energy; frames record
  the image drift as ``drift_x_px`` / ``drift_y_px`` and ``truth:drift_x_px`` /
  ``truth:drift_y_px`` show the energy jump at the current energy. Separate from the
  slow time drift (``--drift-um``). :mod:`sim_devices.xanes_truth` writes the true
  whiteline map of a projection.
* **Pixel-area integration** (``--supersample N``): each pixel averages the
  transmission of N x N sub-rays, as a camera pixel integrates a particle's rim.
  Default 1 (pixel centres) for tomography, which renders every projection afresh;
  2D XANES, which renders one cached image per energy, uses 4 (the XANES demo).

Run::

    python -m sim_devices.txm --prefix TXM: --port 5071 [--binning 2] [--shape NY NX]
        [--seed 0] [--photons 20000] [--drift-um 0] [--axis-offset-px 3.7] [--particles N]
        [--valence-pattern mixed] [--valence-seed SEED] [--energy-drift-px 1]
        [--energy-drift-max-px 3] [--supersample 1] [--zp-tilt-mrad 0 0]
        [--ring-prefix SR: --ring-port 5072]
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace
from textwrap import dedent

import numpy as np
from caproto import ChannelType
from caproto.server import PVGroup, SubGroup, pvproperty
from scipy import ndimage

from sim_devices.areadetector import FrameContext, SimAreaDetector, pvproperty_with_rbv
from sim_devices.motor import MotorAxis, Trajectory
from sim_devices.physics import (
    DetectorGeometry,
    DetectorModel,
    DriftModel,
    ElectrodeTab,
    EnergyDriftModel,
    ZonePlate,
    make_tab,
    object_defocus_um,
    project,
    render_dark,
    render_frame,
)
from sim_devices.physics.xanes import (
    NI_K_EDGE_KEV,
    XANES_WINDOW_KEV,
    ValenceField,
    assign_valence,
    project_xanes,
    xanes_weight,
)
from sim_devices.server import ioc_argument_parser, run_from_args
from sim_devices.shutter import Shutter

__all__ = [
    "CAMERA_PIXEL_UM",
    "DEFAULT_DET_Z_MM",
    "DEFAULT_ENERGY_DRIFT_MAX_PX",
    "DEFAULT_ENERGY_DRIFT_PX",
    "DEFAULT_ENERGY_KEV",
    "DEFAULT_PORT",
    "DEFAULT_PREFIX",
    "DEFAULT_SUPERSAMPLE",
    "DEFAULT_VALENCE_PATTERN",
    "DEFAULT_ZP_Z_MM",
    "SAMPLE_OUT_UM",
    "TXMIOC",
    "TXMOptics",
    "TXMScene",
    "TXMState",
    "TrackedAxis",
    "VALENCE_PATTERNS",
    "ZP_TILT_REFERENCE_Z_MM",
    "canonical_valence_pattern",
    "energy_drift_model",
    "focus_zp_z_mm",
    "in_focus",
    "main",
    "make_valence",
    "optics_of",
    "start_pixel_um",
]

DEFAULT_PREFIX = "TXM:"
DEFAULT_PORT = 5071

ZP_DIAMETER_UM = 120.0
ZP_OUTERMOST_ZONE_NM = 30.0
ZONE_PLATE = ZonePlate(diameter_um=ZP_DIAMETER_UM, outermost_zone_nm=ZP_OUTERMOST_ZONE_NM)
DEFAULT_ENERGY_KEV = 8.0
NOMINAL_MAGNIFICATION = 50.0
_F0 = ZONE_PLATE.focal_length_mm(DEFAULT_ENERGY_KEV)
#: Zone plate and detector positions in focus at M = 50 and 8 keV (thin lens).
DEFAULT_ZP_Z_MM = _F0 * (NOMINAL_MAGNIFICATION + 1.0) / NOMINAL_MAGNIFICATION
DEFAULT_DET_Z_MM = DEFAULT_ZP_Z_MM + _F0 * (NOMINAL_MAGNIFICATION + 1.0)
#: zp:z (mm) where the zone-plate travel tilt adds no transverse offset: in focus at the
#: Ni K-edge and M = 50 (thin lens), the middle of the XANES scans this tilt matters for.
ZP_TILT_REFERENCE_Z_MM = (
    ZONE_PLATE.focal_length_mm(NI_K_EDGE_KEV)
    * (NOMINAL_MAGNIFICATION + 1.0)
    / NOMINAL_MAGNIFICATION
)

CAMERA_PIXEL_UM = 6.5
SENSOR_SHAPE = (1024, 1024)
OBJECTIVES = {"2x": 2.0, "8x": 8.0}
BINNINGS = (1, 2, 4)
DEFAULT_BINNING = 2
DEFAULT_PHOTONS = 20000.0  # photons/px/s at 400 mA: 1000 counts in a 50 ms fly-scan frame
DEFAULT_AXIS_OFFSET_PX = 3.7
FILL_CURRENT_MA = 400.0
SAMPLE_OUT_UM = 200.0
MAX_THETA_VELOCITY = 180.0  # deg/s, sample:theta.VMAX
# Position-compare polls while the rotation moves / rests (the crossing time itself is
# exact: the polls only bound how late the frame clock hears of it).
_TRIGGER_POLL_S = (0.001, 0.01)

# Alignment tolerances (Gaussian sigma of the illumination versus offset).
CONDENSER_XY_SIGMA_MM = 0.1
CONDENSER_Z_SIGMA_MM = 2.0
CONDENSER_PITCH_SIGMA_MRAD = 1.0
APERTURE_SIGMA_UM = 30.0
ZP_XY_SIGMA_UM = 0.5 * ZP_DIAMETER_UM
PHASE_RING_SIGMA_UM = 10.0
PHASE_RING_TRANSMISSION = 0.75
PHASE_CONTRAST_GAIN = 1.5  # weight of the high-passed thickness added by the ring
PHASE_HALO_PX = 6.0  # halo width of Zernike contrast
MAX_DEFOCUS_UM = 2000.0  # beyond this the image is hopeless anyway; caps the blur cost

# XANES: Ni valence field of the NMC particles and sample jumps between energies.
VALENCE_PATTERNS = ("mixed", "core-shell", "gradient", "radial", "uniform", "none")
DEFAULT_VALENCE_PATTERN = "mixed"
DEFAULT_ENERGY_DRIFT_PX = 1.0  # rms per image axis, px at the start-up optics
DEFAULT_ENERGY_DRIFT_MAX_PX = 3.0
# Pixel-area integration (sub-rays per pixel and axis, ``--supersample``) costs ~s^2:
# measured on 2 cores (7344 particles) 13 -> 68 ms per 256 x 256 projection at s = 4,
# 3 -> 13 ms at 128 x 128. Default 1 (pixel centres): a tomogram renders every
# projection afresh (3 x 181 of 256 x 256 in the tomo demo: +30 s, and fly-scan frames
# of 50 ms would render late). 2D XANES renders one cached image per energy and needs
# the camera's area integration at particle rims and edges: its demo passes 4.
DEFAULT_SUPERSAMPLE = 1


# --------------------------------------------------------------------------------------
# Pure optics
# --------------------------------------------------------------------------------------
def focus_zp_z_mm(f_mm: float, det_z_mm: float, sample_y_um: float = 0.0) -> float:
    """Zone-plate position in focus for a detector at ``det_z_mm`` (thin lens, M > 1).

    With the sample at ``sample_y_um / 1000`` mm, ``p + q = L = det_z - y`` and
    ``1/p + 1/q = 1/f`` give ``p = (L - sqrt(L^2 - 4 f L)) / 2``. Returns NaN when no
    position focuses (``L < 4 f``).
    """
    y_mm = sample_y_um * 1e-3
    length = det_z_mm - y_mm
    disc = length * length - 4.0 * f_mm * length
    if length <= 0 or disc < 0:
        return math.nan
    return y_mm + 0.5 * (length - math.sqrt(disc))


@dataclass(frozen=True)
class TXMOptics:
    """Optical state derived from motor positions (mm unless stated).

    Attributes
    ----------
    focal_length_mm, p_mm, q_mm : float
        Zone-plate focal length, object and image distances.
    magnification : float
        ``q / p``.
    pixel_size_um : float
        Effective pixel size in the sample plane.
    defocus_um : float
        Sample-plane defocus ``p - p_focus(q)``, um.
    focus_zp_z_mm : float
        Zone-plate position in focus for the current energy, det:z and sample:y.
    """

    focal_length_mm: float
    p_mm: float
    q_mm: float
    magnification: float
    pixel_size_um: float
    defocus_um: float
    focus_zp_z_mm: float


def optics_of(
    energy_keV: float,
    zp_z_mm: float,
    det_z_mm: float,
    objective: float,
    binning: int,
    sample_y_um: float = 0.0,
    zone_plate: ZonePlate = ZONE_PLATE,
) -> TXMOptics:
    """Thin-lens optics of the TXM for the given positions (see module docstring)."""
    f = zone_plate.focal_length_mm(energy_keV)
    p = zp_z_mm - sample_y_um * 1e-3
    q = det_z_mm - zp_z_mm
    m = q / p
    pixel = CAMERA_PIXEL_UM * binning / (m * objective)
    try:
        defocus = object_defocus_um(f, p, q)
    except ValueError:  # detector inside the focal length: no image at all
        defocus = MAX_DEFOCUS_UM
    return TXMOptics(
        focal_length_mm=f,
        p_mm=p,
        q_mm=q,
        magnification=m,
        pixel_size_um=pixel,
        defocus_um=defocus,
        focus_zp_z_mm=focus_zp_z_mm(f, det_z_mm, sample_y_um),
    )


DEFAULT_PIXEL_UM = optics_of(
    DEFAULT_ENERGY_KEV, DEFAULT_ZP_Z_MM, DEFAULT_DET_Z_MM, 2.0, DEFAULT_BINNING
).pixel_size_um


def start_pixel_um(binning: int, objective: str = "2x") -> float:
    """Effective pixel (um) at the start-up optics (8 keV, M = 50) for ``binning``."""
    return optics_of(
        DEFAULT_ENERGY_KEV, DEFAULT_ZP_Z_MM, DEFAULT_DET_Z_MM, OBJECTIVES[objective], int(binning)
    ).pixel_size_um


def canonical_valence_pattern(pattern: str) -> str:
    """Name of ``pattern`` as :func:`~sim_devices.physics.xanes.assign_valence` knows it.

    ``"gradient"`` is the radial gradient (``"radial"``); ``"none"`` means no chemistry.
    """
    if pattern not in VALENCE_PATTERNS:
        raise ValueError(f"valence pattern must be one of {VALENCE_PATTERNS}, got {pattern!r}")
    return "radial" if pattern == "gradient" else pattern


def make_valence(tab: ElectrodeTab, pattern: str, seed: int) -> ValenceField | None:
    """The valence field the IOC gives ``tab`` (None for pattern ``"none"``)."""
    pattern = canonical_valence_pattern(pattern)
    if pattern == "none":
        return None
    return assign_valence(tab, seed=int(seed), pattern=pattern)


def energy_drift_model(
    rms_px: float, max_px: float, pixel_um: float, seed: int
) -> EnergyDriftModel:
    """Energy drift of ``rms_px`` (max ``max_px``) pixels of ``pixel_um``, in the XANES window."""
    rms_px, max_px = float(rms_px), float(max_px)
    if not (math.isfinite(rms_px) and rms_px >= 0 and max_px >= 0):
        raise ValueError("energy drift rms and maximum must be finite and >= 0")
    return EnergyDriftModel(
        rms_um=rms_px * pixel_um,
        max_um=max_px * pixel_um,
        seed=int(seed),
        window_keV=XANES_WINDOW_KEV,
    )


# --------------------------------------------------------------------------------------
# Scene: state -> frame
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TXMState:
    """Everything a frame depends on (motor positions at mid-exposure, beam, optics).

    Units as the PVs: deg, um (sample, zp x/y, aperture, phase ring), mm (zp:z, det:z,
    condenser x/y/z), mrad (condenser pitch), keV, mA; ``time_s`` since start-up
    (drift).
    """

    theta_deg: float = 0.0
    sample_um: tuple[float, float, float] = (0.0, 0.0, 0.0)
    energy_keV: float = DEFAULT_ENERGY_KEV  # noqa: N815 - unit spelling
    zp_z_mm: float = DEFAULT_ZP_Z_MM
    det_z_mm: float = DEFAULT_DET_Z_MM
    zp_xy_um: tuple[float, float] = (0.0, 0.0)
    objective: float = 2.0
    binning: int = DEFAULT_BINNING
    shutter_open: bool = True
    ring_current_ma: float = FILL_CURRENT_MA
    phase_ring_in: bool = False
    phase_ring_xy_um: tuple[float, float] = (0.0, 0.0)
    condenser: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    aperture_xy_um: tuple[float, float] = (0.0, 0.0)
    time_s: float = 0.0

    @property
    def optics(self) -> TXMOptics:
        """Derived thin-lens optics."""
        return optics_of(
            self.energy_keV,
            self.zp_z_mm,
            self.det_z_mm,
            self.objective,
            self.binning,
            self.sample_um[1],
        )

    def attributes(self) -> dict[str, float]:
        """Per-frame HDF5 attributes (``docs/txm.md``)."""
        x, y, z = self.sample_um
        return {
            "theta": self.theta_deg,
            "sample_x": x,
            "sample_y": y,
            "sample_z": z,
            "energy": self.energy_keV,
        }


def in_focus(
    state: TXMState,
    energy_keV: float | None = None,  # noqa: N803 - unit spelling
    magnification: float = NOMINAL_MAGNIFICATION,
) -> TXMState:
    """``state`` at ``energy_keV`` with zone plate and detector in focus at ``magnification``.

    What the energy pseudo-axis (``multiscope.devices.txm.TXMEnergy``, thin lens, no
    calibration) does: ``zp:z = f (M + 1) / M``, ``det:z = zp:z + f (M + 1)``, so
    the pixel size stays that of ``M``. For ``sample:y = 0``.
    """
    energy = state.energy_keV if energy_keV is None else float(energy_keV)
    f = ZONE_PLATE.focal_length_mm(energy)
    zp_z = f * (magnification + 1.0) / magnification
    return replace(
        state, energy_keV=energy, zp_z_mm=zp_z, det_z_mm=zp_z + f * (magnification + 1.0)
    )


def _finite_pair(values, what: str) -> tuple[float, float]:
    pair = tuple(float(v) for v in values)
    if len(pair) != 2 or not all(math.isfinite(v) for v in pair):
        raise ValueError(f"{what} must be two finite numbers, got {values!r}")
    return pair


def _gauss(offset: float, sigma: float) -> float:
    return math.exp(-0.5 * (offset / sigma) ** 2)


@dataclass
class TXMScene:
    """Renders TXM frames of one phantom (pure: no EPICS).

    Parameters
    ----------
    tab : ElectrodeTab
        The phantom.
    seed : int
        Seed of the flat-field pattern.
    photons_per_s : float
        Photons per pixel per second at the flat-field maximum and 400 mA.
    axis_offset_um : float
        Rotation axis minus optical axis across the beam, um (sample plane).
    drift : DriftModel
        Sample drift versus time (off by default).
    valence : ValenceField, optional
        Ni oxidation states of the tab's NMC particles: inside the XANES window
        (``xanes_window_keV``) frames are rendered with the Ni K-edge model
        (:func:`~sim_devices.physics.xanes.project_xanes`, tapered into the
        tabulated attenuation at the window ends); None renders xraydb everywhere.
    energy_drift : EnergyDriftModel
        Sample jump per energy (image plane, um; off by default).
    zp_travel_tilt_mrad : tuple of float
        Tilt (x, y) of the zone plate's z travel against the optical axis, mrad:
        the zone plate moves sideways by ``tilt * (zp:z - ZP_TILT_REFERENCE_Z_MM)``
        um as it refocuses (:meth:`zp_transverse_um`; default (0, 0): none).
    xanes_window_keV : tuple of float
        Energies where the chemistry is rendered (default
        :data:`~sim_devices.physics.xanes.XANES_WINDOW_KEV`).
    cache_size : int
        Line-integral images kept (least recently used first out), keyed by
        geometry, sample position, angle, energy and phase ring.
    supersample : int
        Sub-rays per pixel and axis: ``s > 1`` averages each pixel's transmission
        over its area as a camera does (:func:`~sim_devices.physics.projector.project`,
        ~s^2 the cost); 1 (default) samples pixel centres.
    """

    tab: ElectrodeTab
    seed: int = 0
    photons_per_s: float = DEFAULT_PHOTONS
    axis_offset_um: float = DEFAULT_AXIS_OFFSET_PX * DEFAULT_PIXEL_UM
    drift: DriftModel = field(default_factory=DriftModel)
    valence: ValenceField | None = None
    energy_drift: EnergyDriftModel = field(default_factory=EnergyDriftModel)
    zp_travel_tilt_mrad: tuple[float, float] = (0.0, 0.0)
    xanes_window_keV: tuple[float, float] = XANES_WINDOW_KEV  # noqa: N815 - unit spelling
    cache_size: int = 8
    supersample: int = DEFAULT_SUPERSAMPLE
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False)

    def axis_offset_px(self, state: TXMState, *, with_sample_x: bool = True) -> float:
        """Rotation-axis column minus detector centre column (px) in ``state``.

        ``with_sample_x=False`` gives it for ``sample:x = 0`` (the ground-truth PV):
        the x stage carries the rotation axis, and a flat taken with the sample out
        must not change the truth of the projections taken before.
        """
        shift = self.axis_offset_um - self._zp_shift_um(state, 0)
        if with_sample_x:
            shift += state.sample_um[0]
        return shift / state.optics.pixel_size_um

    def zp_transverse_um(self, state: TXMState) -> tuple[float, float]:
        """Effective transverse zone-plate position (x, y), um: ``zp:x/y`` plus the travel tilt.

        A z stage that is not parallel to the optical axis carries the zone plate
        sideways by ``tilt (mrad) * (zp:z - reference) (mm)`` = um as it refocuses.
        """
        dz_mm = state.zp_z_mm - ZP_TILT_REFERENCE_Z_MM
        tilt_x, tilt_y = self.zp_travel_tilt_mrad
        return (state.zp_xy_um[0] + tilt_x * dz_mm, state.zp_xy_um[1] + tilt_y * dz_mm)

    def _zp_shift_um(self, state: TXMState, axis: int) -> float:
        # The image of the sample follows a transverse zone-plate offset by (1 + 1/M).
        return (1.0 + 1.0 / state.optics.magnification) * self.zp_transverse_um(state)[axis]

    def zp_image_shift_px(self, state: TXMState) -> tuple[float, float]:
        """Image shift (columns, rows) from the effective zone-plate offset in ``state``, px.

        ``scipy.ndimage.shift`` convention, as :meth:`image_shift_px`: a frame is the
        frame of a centred zone plate shifted by ``(rows, columns)``. ``+zp:x`` moves
        the image towards smaller columns (as the sample moving by ``-x``), ``+zp:y``
        towards larger rows (down).
        """
        pixel = state.optics.pixel_size_um
        return (-self._zp_shift_um(state, 0) / pixel, self._zp_shift_um(state, 1) / pixel)

    def geometry(self, state: TXMState, shape: tuple[int, int]) -> DetectorGeometry:
        """Detector grid in the sample plane for ``state``."""
        return DetectorGeometry(
            rows=int(shape[0]),
            cols=int(shape[1]),
            pixel_size_um=state.optics.pixel_size_um,
            axis_offset_px=self.axis_offset_px(state),
        )

    # -- chemistry and drift ----------------------------------------------------------

    def xanes_weight(self, state: TXMState) -> float:
        """Weight of the Ni K-edge model at ``state``'s energy (0: xraydb only)."""
        if self.valence is None:
            return 0.0
        return xanes_weight(state.energy_keV, self.xanes_window_keV)

    def energy_drift_px(self, state: TXMState) -> tuple[float, float]:
        """Image shift (columns, rows) from the energy drift at ``state``, px."""
        x, y = self.energy_drift.offset_um(state.energy_keV)
        pixel = state.optics.pixel_size_um
        return (x / pixel, y / pixel)

    def image_shift_px(self, state: TXMState) -> tuple[float, float]:
        """Total drift of the image (columns, rows) in ``state``, px: energy + time drift.

        Positive moves the image towards larger column / row indices (the
        ``scipy.ndimage.shift`` convention); this is what the frame attributes
        ``drift_x_px`` / ``drift_y_px`` record.
        """
        ex, ey = self.energy_drift_px(state)
        dx, dy, dz = self.drift.offset_um(state.time_s)
        if dx == dy == dz == 0.0:
            return (ex, ey)
        a = math.radians(state.theta_deg)
        pixel = state.optics.pixel_size_um
        return (ex - (math.cos(a) * dx - math.sin(a) * dy) / pixel, ey + dz / pixel)

    def center_um(self, state: TXMState) -> tuple[float, float, float]:
        """Tab point on the rotation axis at the detector centre row (tab frame, um).

        Includes the time drift (tab frame) and the energy drift (an image-plane
        shift, turned into the tab frame at the current angle).
        """
        dx, dy, dz = self.drift.offset_um(state.time_s)
        z = 0.5 * self.tab.height_um - state.sample_um[2] + self._zp_shift_um(state, 1)
        sx, sy = self.energy_drift.offset_um(state.energy_keV)
        if sx or sy:
            # Image shift (sx across, sy down) = sample moved by (sx, -sy) in the lab.
            a = math.radians(state.theta_deg)
            dx -= sx * math.cos(a)
            dy += sx * math.sin(a)
            dz += sy
        return (float(dx), float(dy), float(z + dz))

    def illumination(self, state: TXMState) -> float:
        """Relative flux on the sample from ring current and optics alignment."""
        cx, cy, cz, pitch = state.condenser
        factor = max(state.ring_current_ma, 0.0) / FILL_CURRENT_MA
        factor *= _gauss(math.hypot(cx, cy), CONDENSER_XY_SIGMA_MM)
        factor *= _gauss(cz, CONDENSER_Z_SIGMA_MM) * _gauss(pitch, CONDENSER_PITCH_SIGMA_MRAD)
        factor *= _gauss(math.hypot(*state.aperture_xy_um), APERTURE_SIGMA_UM)
        factor *= _gauss(math.hypot(*self.zp_transverse_um(state)), ZP_XY_SIGMA_UM)
        if state.phase_ring_in:
            factor *= PHASE_RING_TRANSMISSION
        return factor

    def line_integrals(self, state: TXMState, shape: tuple[int, int]) -> np.ndarray:
        """``integral mu dl`` (float32, read-only) seen by the camera, incl. phase contrast.

        Inside the XANES window (with a valence field) the NMC attenuation follows the
        Ni K-edge model; elsewhere the tabulated xraydb values.  Each pixel integrates
        ``supersample`` x ``supersample`` sub-rays (transmission averaged over the
        pixel's area).  The last ``cache_size`` results are cached: frames at rest
        (darks aside), and a sample moved out for flats and back in, reuse them.
        """
        geometry = self.geometry(state, shape)
        center = self.center_um(state)
        ring = 0.0
        if state.phase_ring_in:
            ring = _gauss(math.hypot(*state.phase_ring_xy_um), PHASE_RING_SIGMA_UM)
        sub = max(int(self.supersample), 1)
        key = (geometry, center, float(state.theta_deg), round(state.energy_keV, 6), ring, sub)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        angle = math.radians(state.theta_deg)
        weight = self.xanes_weight(state)
        if weight > 0.0:
            p = project_xanes(
                self.tab, self.valence, angle, state.energy_keV, geometry, center,
                weight=weight, supersample=sub,
            )  # fmt: skip
        else:
            p = project(self.tab, angle, state.energy_keV, geometry, center, supersample=sub)
        if ring > 0.01:
            # Zernike contrast: dense features darker with a bright halo around them.
            halo = ndimage.gaussian_filter(p, PHASE_HALO_PX, mode="nearest", truncate=3.0)
            p = p + np.float32(PHASE_CONTRAST_GAIN * ring) * (p - halo)
        p.flags.writeable = False
        self._cache[key] = p
        while len(self._cache) > max(int(self.cache_size), 1):
            self._cache.popitem(last=False)
        return p

    def detector_model(self, state: TXMState, shape: tuple[int, int]) -> DetectorModel:
        """Camera and illumination model for ``state``."""
        return DetectorModel(
            geometry=self.geometry(state, shape),
            photons_per_s=self.photons_per_s * self.illumination(state),
            seed=self.seed,
            zone_plate=ZONE_PLATE,
        )

    def attributes(self, state: TXMState) -> dict[str, float]:
        """Per-frame HDF5 attributes: the state's, plus the image drift (px)."""
        attrs = state.attributes()
        attrs["drift_x_px"], attrs["drift_y_px"] = self.image_shift_px(state)
        return attrs

    def render(
        self,
        state: TXMState,
        exposure_s: float,
        shape: tuple[int, int],
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, dict[str, float]]:
        """One uint16 frame and its attributes."""
        model = self.detector_model(state, shape)
        if not state.shutter_open or model.photons_per_s <= 0:
            return render_dark(exposure_s, rng, model), self.attributes(state)
        p = self.line_integrals(state, shape)
        defocus = float(np.clip(state.optics.defocus_um, -MAX_DEFOCUS_UM, MAX_DEFOCUS_UM))
        frame = render_frame(p, exposure_s, rng, model, defocus, state.energy_keV)
        return frame, self.attributes(state)


# --------------------------------------------------------------------------------------
# A motor that remembers where it was
# --------------------------------------------------------------------------------------
@dataclass
class _Segment:
    t_start: float
    trajectory: Trajectory
    t_end: float | None = None
    end_position: float | None = None


class TrackedAxis(MotorAxis):
    """A :class:`~sim_devices.motor.MotorAxis` that answers "where was it at time t".

    Same PVs as ``MotorAxis``. It keeps its last few trajectories, so a frame can
    use the position at the middle of its exposure even during a fly scan, and it
    calls ``on_position(axis)`` (an async callable, set by the owning IOC) after
    every readback update, so derived PVs follow the motion.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._segments: deque[_Segment] = deque(maxlen=16)
        self._published = False
        self.on_position = None

    @property
    def position(self) -> float:
        """Readback (EGU); the configured start position before the server runs."""
        if not self._published:
            return self._defaults["position"]
        return super().position

    def record_move(self, trajectory: Trajectory, t_start: float) -> _Segment:
        """Remember a move starting at ``t_start`` (``time.monotonic()``)."""
        segment = _Segment(t_start, trajectory)
        self._segments.append(segment)
        return segment

    def position_at(self, t: float) -> float:
        """Position at monotonic time ``t`` from the recorded trajectories."""
        segments = list(self._segments)
        if not segments:
            return self.position
        for i in range(len(segments) - 1, -1, -1):
            seg = segments[i]
            if t < seg.t_start:
                continue
            if seg.t_end is not None and t >= seg.t_end:
                # At rest after this move; the latest one defers to the readback (SET).
                if i == len(segments) - 1:
                    return self.position
                return float(seg.end_position)
            return seg.trajectory.position(t - seg.t_start)
        return segments[0].trajectory.start

    async def _run_move(self, trajectory: Trajectory) -> None:
        segment = self.record_move(trajectory, time.monotonic())
        try:
            await super()._run_move(trajectory)
        finally:
            segment.end_position = self.position
            segment.t_end = time.monotonic()

    async def _publish_readback(self, position: float) -> None:
        await super()._publish_readback(position)
        self._published = True
        if self.on_position is not None:
            await self.on_position(self)


def _truth_px(name: str, doc: str):
    """A read-only ground-truth image shift PV (px)."""
    return pvproperty(name=name, value=0.0, read_only=True, precision=4, units="px", doc=doc)


def _axis(prefix, *, velocity, limits, egu, position=0.0, acceleration=0.05, precision=4, doc):
    return SubGroup(
        TrackedAxis,
        prefix=prefix,
        velocity=velocity,
        acceleration=acceleration,
        limits=limits,
        position=position,
        egu=egu,
        precision=precision,
        doc=doc,
    )


async def _put_binning(obj, instance, value):
    return await obj.parent.set_binning(value)


# --------------------------------------------------------------------------------------
# The IOC
# --------------------------------------------------------------------------------------
class TXMIOC(PVGroup):
    """Transmission X-ray microscope with an NMC811 tab phantom (see module docstring).

    PVs (prefix e.g. ``TXM:``); motors are motor records (``.VAL``, ``.RBV``,
    ``.DMOV``, ``.MOVN``, ``.STOP``, ``.VELO``, ``.ACCL``, ``.HLM``/``.LLM``, ...)
    ---
    Condenser
        ``cond:x``, ``cond:y``, ``cond:z`` (mm), ``cond:pitch`` (mrad); aligned at 0.
    Zone plate
        ``zp:x``, ``zp:y`` (um, transverse; aligned at 0), ``zp:z`` (mm, object
        distance p; 5..60), ``zp:diameter`` (um, RO), ``zp:dr`` (nm, RO).
    Apertures
        ``aperture:x``, ``aperture:y`` (um, order-sorting aperture),
        ``phase_ring:x``, ``phase_ring:y`` (um), ``phase_ring:in`` (Out/In).
    Sample
        ``sample:x``, ``sample:y``, ``sample:z`` (um; x across the beam, y along it,
        z up; ``|sample:x| >= 200`` is sample-out), ``sample:theta`` (deg,
        -720..720, VELO up to 180 deg/s for fly scans);
        ``sample:rotation_trigger:Position`` (deg) and ``:Pulses_RBV``: the rotation's
        position compare, the start pulse of a camera in TriggerMode External.
    Detector and energy
        ``det:z`` (mm, p + q), ``objective:mag`` (2x/8x), ``mono:energy`` (keV, 5..15).
    Optics (read-only, follow the motors)
        ``optics:pixel_size`` (nm), ``optics:magnification`` (q/p).
    Camera
        ``cam1:`` areaDetector driver and ``HDF1:`` NDFileHDF5 plugin (as
        ``sim_devices.areadetector``), plus ``cam1:BinX``/``BinY`` (+ ``_RBV``:
        1, 2 or 4, set together; refused while acquiring or capturing). Frames
        carry the attributes ``theta`` (deg, mid-exposure), ``sample_x``,
        ``sample_y``, ``sample_z`` (um), ``energy`` (keV) and ``drift_x_px``,
        ``drift_y_px`` (image drift, px: columns +right, rows +down).
    Beam
        ``beam:ring_current`` (mA, RO: the ring current frames are rendered with, from
        the ring IOC); ``shutter:Cmd``, ``shutter:Pos-Sts``, ``shutter:Open-Sts``,
        ``shutter:ActTime``.
    Ground truth (simulation only)
        ``truth:axis_offset_px`` (rotation axis column minus centre column, px, at
        ``sample:x = 0``),
        ``truth:focus_zp_z`` (mm, in focus for the current energy, det:z, sample:y),
        ``truth:seed`` (phantom seed), ``truth:drift_x_px``, ``truth:drift_y_px``
        (energy drift of the image at the current energy, px),
        ``truth:valence_seed``, ``truth:valence_pattern`` (Ni valence field),
        ``truth:zp_shift_x_px``, ``truth:zp_shift_y_px`` (image shift from the
        effective transverse zone-plate position, travel tilt included, px).

    Parameters
    ----------
    shape : tuple of int, optional
        Binned frame shape (ny, nx) at start-up; default the 1024 x 1024 sensor
        divided by ``binning``.
    binning : int
        Start-up binning (1, 2 or 4).
    seed : int
        Phantom, flat-field, noise and drift seed.
    photons : float
        Photons per pixel per second at the flat-field maximum, 400 mA.
    drift_um : float
        Rms sample drift per axis (um); 0 disables drift.
    axis_offset_px : float
        Rotation-axis offset from the detector centre (px at the start-up optics).
    particles : int, optional
        Number of NMC particles (default: fill 45 % of the coating).
    tab : ElectrodeTab, optional
        A ready phantom (tests), instead of building one from ``seed``.
    valence_pattern : str
        Ni valence field of the NMC particles: ``mixed`` (default), ``core-shell``,
        ``gradient`` (= ``radial``), ``uniform``, or ``none`` (no chemistry).
    valence_seed : int, optional
        Seed of the valence field (default ``seed``).
    energy_drift_px : float
        Rms image jump per axis at each energy of the XANES window (px at the
        start-up optics); 0 disables it.
    energy_drift_max_px : float
        Largest jump (px at the start-up optics).
    zp_tilt_mrad : tuple of float
        Tilt (x, y) of the zone plate's z travel against the optical axis, mrad
        (``--zp-tilt-mrad``; :attr:`TXMScene.zp_travel_tilt_mrad`); (0, 0): none.
    supersample : int
        Sub-rays per pixel and axis of every render (``--supersample``; 1: pixel
        centres, for tomography; 4 for 2D XANES, see :data:`DEFAULT_SUPERSAMPLE`).
    """

    # -- condenser ------------------------------------------------------------------
    cond_x = _axis("cond:x", velocity=1.0, limits=(-5, 5), egu="mm", doc="Condenser x (mm)")
    cond_y = _axis("cond:y", velocity=1.0, limits=(-5, 5), egu="mm", doc="Condenser y (mm)")
    cond_z = _axis("cond:z", velocity=2.0, limits=(-20, 20), egu="mm", doc="Condenser z (mm)")
    cond_pitch = _axis(
        "cond:pitch", velocity=1.0, limits=(-10, 10), egu="mrad", doc="Condenser pitch (mrad)"
    )
    # -- zone plate -----------------------------------------------------------------
    zp_x = _axis("zp:x", velocity=100.0, limits=(-500, 500), egu="um", doc="Zone plate x (um)")
    zp_y = _axis("zp:y", velocity=100.0, limits=(-500, 500), egu="um", doc="Zone plate y (um)")
    zp_z = _axis(
        "zp:z",
        velocity=5.0,
        limits=(5.0, 60.0),
        egu="mm",
        position=DEFAULT_ZP_Z_MM,
        precision=5,
        doc="Zone plate distance from the sample p (mm)",
    )
    zp_diameter = pvproperty(
        name="zp:diameter",
        value=ZP_DIAMETER_UM,
        read_only=True,
        units="um",
        precision=1,
        doc="Zone-plate diameter D (um)",
    )
    zp_dr = pvproperty(
        name="zp:dr",
        value=ZP_OUTERMOST_ZONE_NM,
        read_only=True,
        units="nm",
        precision=1,
        doc="Zone-plate outermost zone width dr (nm)",
    )
    # -- apertures ------------------------------------------------------------------
    aperture_x = _axis(
        "aperture:x", velocity=200.0, limits=(-1000, 1000), egu="um", doc="OSA x (um)"
    )
    aperture_y = _axis(
        "aperture:y", velocity=200.0, limits=(-1000, 1000), egu="um", doc="OSA y (um)"
    )
    phase_ring_x = _axis(
        "phase_ring:x", velocity=200.0, limits=(-1000, 1000), egu="um", doc="Phase ring x (um)"
    )
    phase_ring_y = _axis(
        "phase_ring:y", velocity=200.0, limits=(-1000, 1000), egu="um", doc="Phase ring y (um)"
    )
    phase_ring_in = pvproperty(
        name="phase_ring:in",
        dtype=ChannelType.ENUM,
        enum_strings=("Out", "In"),
        value="Out",
        doc="Zernike phase ring inserted (In: phase contrast when aligned)",
    )
    # -- sample ---------------------------------------------------------------------
    sample_x = _axis(
        "sample:x",
        velocity=1000.0,
        limits=(-5000, 5000),
        egu="um",
        doc="Sample x across the beam (um); |x| >= 200 takes the sample out",
    )
    sample_y = _axis(
        "sample:y",
        velocity=1000.0,
        limits=(-2000, 2000),
        egu="um",
        doc="Sample y along the beam (um); changes the focus",
    )
    sample_z = _axis(
        "sample:z",
        velocity=500.0,
        limits=(-3000, 3000),
        egu="um",
        doc="Sample z vertical (um); 0 = middle of the tab at the detector centre",
    )
    sample_theta = _axis(
        "sample:theta",
        velocity=90.0,
        acceleration=0.05,
        limits=(-720, 720),
        egu="deg",
        doc="Sample rotation (deg); VELO up to 180 deg/s for fly scans",
    )
    rotation_trigger_position = pvproperty(
        name="sample:rotation_trigger:Position",
        value=0.0,
        precision=4,
        units="deg",
        doc="Angle whose increasing crossing by sample:theta fires the camera's start pulse",
    )
    rotation_trigger_pulses = pvproperty(
        name="sample:rotation_trigger:Pulses_RBV",
        value=0,
        read_only=True,
        doc="Start pulses fired since the IOC started",
    )
    # -- detector, objective, energy --------------------------------------------------
    det_z = _axis(
        "det:z",
        velocity=100.0,
        acceleration=0.1,
        limits=(300.0, 2500.0),
        egu="mm",
        position=DEFAULT_DET_Z_MM,
        precision=3,
        doc="Detector distance from the sample p + q (mm)",
    )
    objective_mag = pvproperty(
        name="objective:mag",
        dtype=ChannelType.ENUM,
        enum_strings=tuple(OBJECTIVES),
        value="2x",
        doc="Scintillator objective (2x large field, 8x high resolution)",
    )
    mono_energy = _axis(
        "mono:energy",
        velocity=1.0,
        acceleration=0.02,
        limits=(5.0, 15.0),
        egu="keV",
        position=DEFAULT_ENERGY_KEV,
        precision=5,
        doc="Monochromator energy (keV)",
    )
    # -- optics ---------------------------------------------------------------------
    optics_pixel_size = pvproperty(
        name="optics:pixel_size",
        value=DEFAULT_PIXEL_UM * 1e3,
        read_only=True,
        units="nm",
        precision=3,
        doc="Effective pixel size at the sample (nm) from zp:z, det:z, objective, binning",
    )
    optics_magnification = pvproperty(
        name="optics:magnification",
        value=NOMINAL_MAGNIFICATION,
        read_only=True,
        precision=4,
        doc="X-ray magnification q/p of the zone plate",
    )
    # -- camera binning (the rest of cam1: comes from SimAreaDetector) ---------------
    bin_x = pvproperty_with_rbv(
        name="cam1:BinX",
        value=DEFAULT_BINNING,
        put=_put_binning,
        doc="Camera binning (1, 2, 4; BinX and BinY are set together)",
    )
    bin_y = pvproperty_with_rbv(
        name="cam1:BinY",
        value=DEFAULT_BINNING,
        put=_put_binning,
        doc="Camera binning (1, 2, 4; BinX and BinY are set together)",
    )
    # -- beam -----------------------------------------------------------------------
    ring_current = pvproperty(
        name="beam:ring_current",
        value=FILL_CURRENT_MA,
        units="mA",
        precision=2,
        read_only=True,
        doc="Ring current the frames are rendered with (mA): the ring IOC's ring:current "
        "(--ring-prefix), else the fill current; the last value while the ring IOC is away",
    )
    shutter = SubGroup(Shutter, prefix="shutter:", actuation_time=0.05, doc="Beam shutter")
    # -- ground truth ---------------------------------------------------------------
    truth_axis_offset_px = pvproperty(
        name="truth:axis_offset_px",
        value=DEFAULT_AXIS_OFFSET_PX,
        read_only=True,
        precision=4,
        units="px",
        doc="Ground truth: rotation axis column minus detector centre column (px), sample:x=0",
    )
    truth_focus_zp_z = pvproperty(
        name="truth:focus_zp_z",
        value=DEFAULT_ZP_Z_MM,
        read_only=True,
        precision=6,
        units="mm",
        doc="Ground truth: zone-plate z in focus at the current energy and det:z (mm)",
    )
    truth_seed = pvproperty(
        name="truth:seed",
        value=0,
        dtype=ChannelType.LONG,
        read_only=True,
        doc="Ground truth: phantom seed (the same seed rebuilds the phantom)",
    )
    truth_drift_x_px = _truth_px(
        "truth:drift_x_px",
        "Ground truth: energy drift of the image at the current energy, columns (px, +right)",
    )
    truth_drift_y_px = _truth_px(
        "truth:drift_y_px",
        "Ground truth: energy drift of the image at the current energy, rows (px, +down)",
    )
    truth_valence_seed = pvproperty(
        name="truth:valence_seed",
        value=0,
        dtype=ChannelType.LONG,
        read_only=True,
        doc="Ground truth: seed of the Ni valence field (with the pattern, rebuilds it)",
    )
    truth_valence_pattern = pvproperty(
        name="truth:valence_pattern",
        value="mixed",
        dtype=ChannelType.STRING,
        read_only=True,
        doc="Ground truth: Ni valence pattern (core-shell, radial, uniform, mixed; none)",
    )
    truth_zp_shift_x_px = _truth_px(
        "truth:zp_shift_x_px",
        "Ground truth: image shift from the effective zone-plate x (zp:x + travel tilt), "
        "columns (px, +right)",
    )
    truth_zp_shift_y_px = _truth_px(
        "truth:zp_shift_y_px",
        "Ground truth: image shift from the effective zone-plate y (zp:y + travel tilt), "
        "rows (px, +down)",
    )

    def __init__(
        self,
        *args,
        shape: tuple[int, int] | None = None,
        binning: int = DEFAULT_BINNING,
        seed: int = 0,
        photons: float = DEFAULT_PHOTONS,
        drift_um: float = 0.0,
        axis_offset_px: float = DEFAULT_AXIS_OFFSET_PX,
        particles: int | None = None,
        tab: ElectrodeTab | None = None,
        valence_pattern: str = DEFAULT_VALENCE_PATTERN,
        valence_seed: int | None = None,
        energy_drift_px: float = DEFAULT_ENERGY_DRIFT_PX,
        energy_drift_max_px: float = DEFAULT_ENERGY_DRIFT_MAX_PX,
        supersample: int = DEFAULT_SUPERSAMPLE,
        zp_tilt_mrad: tuple[float, float] = (0.0, 0.0),
        ring_prefix: str | None = None,
        ring_port: int | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.ring_prefix = ring_prefix
        self.ring_port = ring_port
        # Written by the ring IOC's monitor (a caproto callback thread), read per frame.
        self.ring_current_ma = FILL_CURRENT_MA
        binning = int(binning)
        if binning not in BINNINGS:
            raise ValueError(f"binning must be one of {BINNINGS}")
        if shape is None:
            shape = (SENSOR_SHAPE[0] // binning, SENSOR_SHAPE[1] // binning)
        shape = (int(shape[0]), int(shape[1]))
        self.sensor_shape = (shape[0] * binning, shape[1] * binning)
        self.binning = binning
        self.objective = OBJECTIVES["2x"]
        self.seed = int(seed)
        if tab is None:
            tab = make_tab(seed=self.seed, n_particles=particles)
        start_pixel = start_pixel_um(binning)
        drift = DriftModel(rms_um=(float(drift_um),) * 3, seed=self.seed)
        self.valence_pattern = canonical_valence_pattern(valence_pattern)
        self.valence_seed = self.seed if valence_seed is None else int(valence_seed)
        self.physics = TXMScene(
            tab=tab,
            seed=self.seed,
            photons_per_s=float(photons),
            axis_offset_um=float(axis_offset_px) * start_pixel,
            drift=drift,
            valence=make_valence(tab, self.valence_pattern, self.valence_seed),
            energy_drift=energy_drift_model(
                energy_drift_px, energy_drift_max_px, start_pixel, self.seed
            ),
            supersample=supersample,
            zp_travel_tilt_mrad=_finite_pair(zp_tilt_mrad, "zp_tilt_mrad"),
        )
        # Render once before serving: the projector's numba kernels compile (or load their
        # cache) now, not on the first projection of a fly scan, where a 1-2 s stall on a
        # fresh machine would skip tens of degrees of rotation. The second frame, at the
        # Ni edge, builds the valence shells and the edge model's xraydb fits.
        for energy in (DEFAULT_ENERGY_KEV, NI_K_EDGE_KEV + 0.018):
            self.physics.render(
                TXMState(binning=binning, theta_deg=30.0, energy_keV=energy),
                0.001,
                (16, 16),
                np.random.default_rng(0),
            )
        self.physics._cache.clear()
        self.camera = SimAreaDetector(
            prefix=self.prefix,
            scene=self.scene,
            shape=shape,
            ioc=self,
            seed=self.seed,
            start_trigger=self.rotation_start_pulse,
        )
        self.pvdb.update(self.camera.pvdb)
        self._t0 = time.monotonic()
        for axis in (self.zp_x, self.zp_y, self.zp_z, self.det_z, self.mono_energy):
            axis.on_position = self._axis_moved
        for axis in (self.sample_x, self.sample_y):
            axis.on_position = self._axis_moved

    # -- state ----------------------------------------------------------------------

    def state(self, t: float | None = None) -> TXMState:
        """The instrument state; sample, rotation and energy at monotonic time ``t``."""
        now = time.monotonic()
        t = now if t is None else t

        def at(axis: TrackedAxis) -> float:
            return axis.position_at(t)

        return TXMState(
            theta_deg=at(self.sample_theta),
            sample_um=(at(self.sample_x), at(self.sample_y), at(self.sample_z)),
            energy_keV=at(self.mono_energy),
            zp_z_mm=self.zp_z.position,
            det_z_mm=self.det_z.position,
            zp_xy_um=(self.zp_x.position, self.zp_y.position),
            objective=self.objective,
            binning=self.binning,
            shutter_open=self.shutter.open,
            ring_current_ma=self.ring_current_ma,
            phase_ring_in=self.phase_ring_in.value == "In",
            phase_ring_xy_um=(self.phase_ring_x.position, self.phase_ring_y.position),
            condenser=(
                self.cond_x.position,
                self.cond_y.position,
                self.cond_z.position,
                self.cond_pitch.position,
            ),
            aperture_xy_um=(self.aperture_x.position, self.aperture_y.position),
            time_s=t - self._t0,
        )

    def scene(self, ctx: FrameContext) -> tuple[np.ndarray, dict[str, float]]:
        """Render one frame with the positions at the middle of its exposure."""
        # ctx.timestamp is the wall-clock end of the exposure; motors run on monotonic time.
        end = time.monotonic() - (time.time() - ctx.timestamp)
        state = self.state(end - 0.5 * ctx.exposure_time)
        return self.physics.render(state, ctx.exposure_time, ctx.shape, ctx.rng)

    async def rotation_start_pulse(self) -> float:
        """Wait for ``sample:theta`` to pass the trigger angle increasing; return when.

        The position compare of a rotation controller (e.g. PSO): armed now, it fires
        on the next crossing of ``sample:rotation_trigger:Position`` from below. The
        crossing time comes from the recorded trajectory (bisection between two
        polls), so the pulse is exact however late this task wakes; at rest it polls
        less often (no crossing can happen).
        """
        threshold = float(self.rotation_trigger_position.value)
        axis = self.sample_theta
        t_before = time.monotonic()
        p_before = axis.position_at(t_before)
        while True:
            await asyncio.sleep(_TRIGGER_POLL_S[0] if axis.moving else _TRIGGER_POLL_S[1])
            t_after = time.monotonic()
            p_after = axis.position_at(t_after)
            if p_before < threshold <= p_after:
                break
            t_before, p_before = t_after, p_after
        for _ in range(40):  # to well under a microsecond
            middle = 0.5 * (t_before + t_after)
            if axis.position_at(middle) >= threshold:
                t_after = middle
            else:
                t_before = middle
        await self.rotation_trigger_pulses.write(int(self.rotation_trigger_pulses.value) + 1)
        return t_after

    # -- derived PVs ----------------------------------------------------------------

    async def _write_if_changed(self, prop, value: float, tol: float = 1e-9) -> None:
        if not math.isfinite(value):
            value = math.nan
        old = prop.value
        if math.isnan(value) and isinstance(old, float) and math.isnan(old):
            return
        if abs(float(old) - value) > tol or math.isnan(value):
            await prop.write(value)

    async def update_derived(self) -> None:
        """Recompute optics and ground-truth PVs from the current positions."""
        state = self.state()
        optics = state.optics
        await self._write_if_changed(self.optics_pixel_size, optics.pixel_size_um * 1e3)
        await self._write_if_changed(self.optics_magnification, optics.magnification)
        await self._write_if_changed(self.truth_focus_zp_z, optics.focus_zp_z_mm)
        await self._write_if_changed(
            self.truth_axis_offset_px, self.physics.axis_offset_px(state, with_sample_x=False), 1e-6
        )
        drift_x, drift_y = self.physics.energy_drift_px(state)
        await self._write_if_changed(self.truth_drift_x_px, drift_x, 1e-6)
        await self._write_if_changed(self.truth_drift_y_px, drift_y, 1e-6)
        zp_shift_x, zp_shift_y = self.physics.zp_image_shift_px(state)
        await self._write_if_changed(self.truth_zp_shift_x_px, zp_shift_x, 1e-6)
        await self._write_if_changed(self.truth_zp_shift_y_px, zp_shift_y, 1e-6)

    async def _axis_moved(self, axis: TrackedAxis) -> None:
        await self.update_derived()

    @truth_seed.startup
    async def truth_seed(self, instance, async_lib):
        """Publish the seed and the derived PVs at start-up."""
        await instance.write(self.seed)
        await self.truth_valence_seed.write(self.valence_seed)
        await self.truth_valence_pattern.write(self.valence_pattern)
        # Informational, as on a real controller: fly scans may use up to this.
        await self.sample_theta.fields.max_velocity.write(MAX_THETA_VELOCITY)
        for pair in (self.bin_x, self.bin_y):
            await pair.setpoint.write(self.binning, verify_value=False)
            await pair.readback.write(self.binning)
        await self.update_derived()

    @ring_current.startup
    async def ring_current(self, instance, async_lib):
        """Follow the ring IOC's current (with ``--ring-prefix``), reconnecting as it comes back."""
        if self.ring_prefix is None:
            return
        from caproto.asyncio.client import Context

        if self.ring_port is not None:
            # The server environment pointed this process's CA client at its own port;
            # the ring is served elsewhere. Searches read the variable when they are sent.
            os.environ["EPICS_CA_ADDR_LIST"] = f"127.0.0.1:{self.ring_port}"
        loop = asyncio.get_running_loop()

        def on_current(sub, response):
            self.ring_current_ma = float(response.data[0])
            asyncio.run_coroutine_threadsafe(instance.write(self.ring_current_ma), loop)

        self._ring_client = Context()
        (pv,) = await self._ring_client.get_pvs(f"{self.ring_prefix}ring:current", timeout=None)
        self._ring_callback = on_current  # caproto holds callbacks by weak reference
        pv.subscribe(data_type="time").add_callback(on_current)

    @objective_mag.putter
    async def objective_mag(self, instance, value):
        """Switch the objective: the pixel size changes by the magnification ratio."""
        name = value if isinstance(value, str) else tuple(OBJECTIVES)[int(value)]
        self.objective = OBJECTIVES[name]
        await self.update_derived()
        return value

    def _camera_busy(self) -> bool:
        task = self.camera.cam._task
        return (task is not None and not task.done()) or self.camera.hdf.capturing

    async def set_binning(self, value) -> int:
        """Change BinX and BinY together; the frame shape follows the sensor size."""
        binning = int(value)
        if binning not in BINNINGS:
            raise ValueError(f"binning must be one of {BINNINGS}, not {value}")
        if binning != self.binning and self._camera_busy():
            raise RuntimeError("cannot change binning while acquiring or capturing")
        ny, nx = (self.sensor_shape[0] // binning, self.sensor_shape[1] // binning)
        self.binning = binning
        self.camera.shape = (ny, nx)
        cam, hdf = self.camera.cam, self.camera.hdf
        for prop, v in (
            (cam.array_size_x, nx),
            (cam.array_size_y, ny),
            (cam.array_size0, nx),
            (cam.array_size1, ny),
            (cam.array_size_bytes, 2 * nx * ny),
            (cam.size_x.setpoint, nx),
            (cam.size_x.readback, nx),
            (cam.size_y.setpoint, ny),
            (cam.size_y.readback, ny),
            (hdf.array_size0, nx),
            (hdf.array_size1, ny),
        ):
            await prop.write(v, verify_value=False)
        for pair in (self.bin_x, self.bin_y):
            await pair.setpoint.write(binning, verify_value=False)
            await pair.readback.write(binning)
        await self.update_derived()
        return binning


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, build the phantom and serve the TXM IOC until SIGTERM."""
    parser = ioc_argument_parser(
        dedent(TXMIOC.__doc__ or ""), default_prefix=DEFAULT_PREFIX, default_port=DEFAULT_PORT
    )
    parser.add_argument(
        "--shape",
        type=int,
        nargs=2,
        metavar=("NY", "NX"),
        default=None,
        help="binned frame shape (default: 1024 x 1024 sensor / binning)",
    )
    parser.add_argument(
        "--binning", type=int, choices=BINNINGS, default=DEFAULT_BINNING, help="camera binning"
    )
    parser.add_argument("--seed", type=int, default=0, help="phantom and noise seed")
    parser.add_argument(
        "--photons",
        type=float,
        default=DEFAULT_PHOTONS,
        help="photons per pixel per second at 400 mA (default %(default)s)",
    )
    parser.add_argument(
        "--drift-um", type=float, default=0.0, help="rms sample drift per axis, um (default 0)"
    )
    parser.add_argument(
        "--axis-offset-px",
        type=float,
        default=DEFAULT_AXIS_OFFSET_PX,
        help="rotation axis column minus centre, px (default %(default)s)",
    )
    parser.add_argument(
        "--particles",
        type=int,
        default=None,
        help="number of NMC particles (default: fill 45 %% of the coating)",
    )
    parser.add_argument(
        "--valence-pattern",
        choices=VALENCE_PATTERNS,
        default=DEFAULT_VALENCE_PATTERN,
        help="Ni oxidation-state field of the NMC particles (gradient = radial; none: no "
        "chemistry, xraydb at every energy; default %(default)s)",
    )
    parser.add_argument(
        "--valence-seed",
        type=int,
        default=None,
        help="seed of the valence field (default: --seed)",
    )
    parser.add_argument(
        "--energy-drift-px",
        type=float,
        default=DEFAULT_ENERGY_DRIFT_PX,
        help="rms image jump per axis at each energy in the XANES window, px at the "
        "start-up optics (0 disables; default %(default)s)",
    )
    parser.add_argument(
        "--energy-drift-max-px",
        type=float,
        default=DEFAULT_ENERGY_DRIFT_MAX_PX,
        help="largest energy jump, px (default %(default)s)",
    )
    parser.add_argument(
        "--supersample",
        type=int,
        choices=range(1, 9),
        default=DEFAULT_SUPERSAMPLE,
        metavar="N",
        help="sub-rays per pixel and axis, 1-8: pixel-area integration as a camera does, "
        "~N^2 the render cost (default %(default)s: pixel centres, for tomography; 2D "
        "XANES: 4)",
    )
    parser.add_argument(
        "--zp-tilt-mrad",
        type=float,
        nargs=2,
        metavar=("X", "Y"),
        default=(0.0, 0.0),
        help="tilt of the zone plate's z travel against the optical axis, mrad: the zone "
        "plate moves sideways by tilt * (zp:z - z at the Ni edge) um as the energy axis "
        "refocuses (default 0 0)",
    )
    parser.add_argument(
        "--ring-prefix",
        default=None,
        help="prefix of the ring IOC (sim_devices.ring) whose ring:current scales the "
        "illumination (default: none, the ring holds its fill current)",
    )
    parser.add_argument(
        "--ring-port", type=int, default=None, help="CA port of the ring IOC on 127.0.0.1"
    )
    args = parser.parse_args(argv)
    ioc = TXMIOC(
        prefix=args.prefix,
        shape=None if args.shape is None else tuple(args.shape),
        binning=args.binning,
        seed=args.seed,
        photons=args.photons,
        drift_um=args.drift_um,
        axis_offset_px=args.axis_offset_px,
        particles=args.particles,
        valence_pattern=args.valence_pattern,
        valence_seed=args.valence_seed,
        energy_drift_px=args.energy_drift_px,
        energy_drift_max_px=args.energy_drift_max_px,
        supersample=args.supersample,
        zp_tilt_mrad=tuple(args.zp_tilt_mrad),
        ring_prefix=args.ring_prefix,
        ring_port=args.ring_port,
    )
    run_from_args(ioc.pvdb, args)


if __name__ == "__main__":
    main()
