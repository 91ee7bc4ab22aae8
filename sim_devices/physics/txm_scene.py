"""The TXM scene: what the camera of the simulated TXM sees, as a pure function of state.

No EPICS here: :class:`TXMScene` turns a :class:`TXMState` (motor positions at
mid-exposure, beam, optics) into one camera frame; the IOC (:mod:`sim_devices.txm`)
builds the state from its motors and serves the frame, and the truth writers
(:mod:`sim_devices.tomo_truth`, :mod:`sim_devices.xanes_truth`) and the unit tests
render the same scene without a network.

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
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from .detector import (
    DetectorModel,
    DriftModel,
    EnergyDriftModel,
    ZonePlate,
    object_defocus_um,
    render_dark,
    render_frame,
)
from .phantom import ElectrodeTab
from .projector import DetectorGeometry, project
from .xanes import (
    NI_K_EDGE_KEV,
    XANES_WINDOW_KEV,
    ValenceField,
    assign_valence,
    project_xanes,
    xanes_weight,
)

__all__ = [
    "BINNINGS",
    "CAMERA_PIXEL_UM",
    "DEFAULT_AXIS_OFFSET_PX",
    "DEFAULT_BINNING",
    "DEFAULT_DET_Z_MM",
    "DEFAULT_ENERGY_DRIFT_MAX_PX",
    "DEFAULT_ENERGY_DRIFT_PX",
    "DEFAULT_ENERGY_KEV",
    "DEFAULT_PHOTONS",
    "DEFAULT_PIXEL_UM",
    "DEFAULT_SUPERSAMPLE",
    "DEFAULT_VALENCE_PATTERN",
    "DEFAULT_ZP_Z_MM",
    "FILL_CURRENT_MA",
    "NOMINAL_MAGNIFICATION",
    "OBJECTIVES",
    "SAMPLE_OUT_UM",
    "SENSOR_SHAPE",
    "TXMOptics",
    "TXMScene",
    "TXMState",
    "VALENCE_PATTERNS",
    "ZONE_PLATE",
    "ZP_DIAMETER_UM",
    "ZP_OUTERMOST_ZONE_NM",
    "ZP_TILT_REFERENCE_Z_MM",
    "canonical_valence_pattern",
    "energy_drift_model",
    "finite_pair",
    "focus_zp_z_mm",
    "in_focus",
    "make_valence",
    "optics_of",
    "start_pixel_um",
]

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
            "ring_current": self.ring_current_ma,
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


def finite_pair(values, what: str) -> tuple[float, float]:
    """``values`` as two finite floats; ``ValueError`` naming ``what`` otherwise."""
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

    def clear_cache(self) -> None:
        """Forget the cached line-integral images (e.g. those of a warm-up render)."""
        self._cache.clear()

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
