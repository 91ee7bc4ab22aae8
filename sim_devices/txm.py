"""The simulated transmission X-ray microscope (TXM) IOC: real projections of an NMC811 tab.

This module is the IOC only: its PVs (motors, optics, camera, beam, ground truth)
and their wiring. What a frame shows is the pure scene
:class:`sim_devices.physics.txm_scene.TXMScene` (geometry, optics, chemistry and
drift are described there); the motors are
:class:`sim_devices.motor.TrackedAxis`, which remember their trajectories. Per
frame the IOC builds a :class:`~sim_devices.physics.txm_scene.TXMState` from the
motor positions at mid-exposure and the beam, and the scene renders it.

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

Run::

    python -m sim_devices.txm --prefix TXM: --port 5071 [--binning 2] [--shape NY NX]
        [--seed 0] [--photons 20000] [--drift-um 0] [--axis-offset-px 3.7] [--particles N]
        [--tab-width-um 80]
        [--valence-pattern mixed] [--valence-seed SEED] [--energy-drift-px 1]
        [--energy-drift-max-px 3] [--supersample 1] [--zp-tilt-mrad 0 0]
        [--ring-prefix SR: --ring-port 5072]
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import replace
from textwrap import dedent

import numpy as np
from caproto import ChannelType
from caproto.server import PVGroup, SubGroup, pvproperty

from sim_devices.areadetector import FrameContext, SimAreaDetector, pvproperty_with_rbv
from sim_devices.beam import CurrentHistory
from sim_devices.detector_shape import camera_busy, resize_camera
from sim_devices.motor import TrackedAxis
from sim_devices.physics import DriftModel, ElectrodeTab, cached_tab
from sim_devices.physics.phantom import DEFAULT_TAB_WIDTH_UM
from sim_devices.physics.txm_scene import (
    BINNINGS,
    DEFAULT_AXIS_OFFSET_PX,
    DEFAULT_BINNING,
    DEFAULT_DET_Z_MM,
    DEFAULT_ENERGY_DRIFT_MAX_PX,
    DEFAULT_ENERGY_DRIFT_PX,
    DEFAULT_ENERGY_KEV,
    DEFAULT_PHOTONS,
    DEFAULT_PIXEL_UM,
    DEFAULT_SUPERSAMPLE,
    DEFAULT_VALENCE_PATTERN,
    DEFAULT_ZP_Z_MM,
    FILL_CURRENT_MA,
    NOMINAL_MAGNIFICATION,
    OBJECTIVES,
    SENSOR_SHAPE,
    VALENCE_PATTERNS,
    ZP_DIAMETER_UM,
    ZP_OUTERMOST_ZONE_NM,
    TXMScene,
    TXMState,
    canonical_valence_pattern,
    energy_drift_model,
    finite_pair,
    make_valence,
    start_pixel_um,
)
from sim_devices.physics.xanes import NI_K_EDGE_KEV
from sim_devices.server import ioc_argument_parser, run_from_args
from sim_devices.shutter import Shutter

__all__ = ["DEFAULT_PORT", "DEFAULT_PREFIX", "MAX_THETA_VELOCITY", "TXMIOC", "main"]

DEFAULT_PREFIX = "TXM:"
DEFAULT_PORT = 5071
MAX_THETA_VELOCITY = 180.0  # deg/s, sample:theta.VMAX
# Position-compare polls while the rotation moves / rests (the crossing time itself is
# exact: the polls only bound how late the frame clock hears of it).
_TRIGGER_POLL_S = (0.001, 0.01)


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
        ``cam1:`` areaDetector driver, ``HDF1:`` NDFileHDF5 plugin and the ``image1:``,
        ``ROI1:``-``ROI4:``, ``Stats1:``-``Stats5:`` plugins (as
        ``sim_devices.areadetector``, docs/areadetector.md), plus ``cam1:BinX``/``BinY``
        (+ ``_RBV``: 1, 2 or 4, set together; refused while acquiring or capturing). Frames
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
        ``truth:seed`` (phantom seed), ``truth:tab_width_um`` (the phantom's width
        across the cut, um), ``truth:drift_x_px``, ``truth:drift_y_px``
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
    tab_width_um : float
        Width of the tab across the laser cut (x at ``sample:theta = 0``), um
        (``--tab-width-um``; default ``make_tab``'s 80): the width the laser mill
        measured on the tab, for the chain's sample.
    tab : ElectrodeTab, optional
        A ready phantom (tests), instead of building one from ``seed`` and
        ``tab_width_um``.
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
    truth_tab_width_um = pvproperty(
        name="truth:tab_width_um",
        value=DEFAULT_TAB_WIDTH_UM,
        read_only=True,
        precision=3,
        units="um",
        doc="Ground truth: the phantom's width across the cut (um; with the seed, rebuilds it)",
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
        tab_width_um: float = DEFAULT_TAB_WIDTH_UM,
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
        # Written by the ring IOC's monitor (a caproto callback thread), read per frame:
        # a frame receives the mean current over its exposure.
        self.beam = CurrentHistory(FILL_CURRENT_MA)
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
            tab_width_um = float(tab_width_um)
            if not (math.isfinite(tab_width_um) and tab_width_um > 0):
                raise ValueError(f"tab_width_um must be finite and positive, not {tab_width_um}")
            tab = cached_tab(seed=self.seed, width_um=tab_width_um, n_particles=particles)
        self.tab_width_um = float(tab.width_um)
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
            zp_travel_tilt_mrad=finite_pair(zp_tilt_mrad, "zp_tilt_mrad"),
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
        self.physics.clear_cache()
        self.camera = SimAreaDetector(
            prefix=self.prefix,
            scene=self.scene,
            shape=shape,
            ioc=self,
            seed=self.seed,
            start_trigger=self.rotation_start_pulse,
        )
        # Its own cam1:BinX/BinY (they rebin the scene) win over the camera's accepted ones.
        self.pvdb.update({k: v for k, v in self.camera.pvdb.items() if k not in self.pvdb})
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
            ring_current_ma=self.beam.latest,
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
        """Render one frame with the positions at the middle of its exposure.

        The beam is the mean ring current over the exposure (a dump late in a frame
        leaves it almost fully exposed, one early almost dark), recorded per frame as
        the ``ring_current`` attribute.
        """
        end = ctx.monotonic_end()  # motors run on the monotonic clock
        state = self.state(end - 0.5 * ctx.exposure_time)
        state = replace(state, ring_current_ma=self.beam.mean(end - ctx.exposure_time, end))
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
        await self.truth_tab_width_um.write(self.tab_width_um)
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
            self.beam.record(time.monotonic(), float(response.data[0]))
            asyncio.run_coroutine_threadsafe(instance.write(self.beam.latest), loop)

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

    async def set_binning(self, value) -> int:
        """Change BinX and BinY together; the frame shape follows the sensor size."""
        binning = int(value)
        if binning not in BINNINGS:
            raise ValueError(f"binning must be one of {BINNINGS}, not {value}")
        if binning != self.binning and camera_busy(self.camera):
            raise RuntimeError("cannot change binning while acquiring or capturing")
        self.binning = binning
        await resize_camera(
            self.camera, (self.sensor_shape[0] // binning, self.sensor_shape[1] // binning)
        )
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
        "--tab-width-um",
        type=float,
        default=DEFAULT_TAB_WIDTH_UM,
        help="width of the tab across the laser cut, um: the chain's demos pass the width "
        "the laser mill measured (default %(default)s)",
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
        tab_width_um=args.tab_width_um,
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
