"""Focus calibration of the TXM: where the zone plate focuses, at a few energies.

The energy pseudo axis puts the zone plate and the detector at the thin-lens
focus plus a :class:`~multiscope.analysis.optics.FocusCalibration` correction.
:func:`focus_calibration` measures that correction: at each energy it puts the
monochromator and the detector at the thin-lens positions, scans the zone plate
along the beam through the thin-lens prediction, scores every frame with a
sharpness metric (:mod:`multiscope.analysis.focus`), finds the peak to a
fraction of the step, stores the best positions as offsets from the thin lens
and, after the last energy, writes the calibration (a spline over the energies)
to ``energy.calibration``.

One run; its documents carry everything needed to recompute the result:

===========  ===================================================================
``primary``  one frame per zone-plate position: image, the energy device's
             readbacks (``energy_zp_z``...), ``focus_energy_index``
``focus``    one event per energy: best ``zp_z``, offsets, peak sharpness (lateral:
             image displacement, pixel size, zone-plate x/y)
===========  ===================================================================

with ``lateral``: ``lateral`` (one in-focus frame per energy) and, with
``check_lateral``, ``lateral_check`` (a frame per energy through the calibrated
axis) and ``lateral_residual`` (its remaining displacement);

and a ``focus_calibration`` block in the start document (energies, scan offsets,
thin-lens positions, optics, metric, fit window, detector mode, the previous
calibration).

**Lateral** (``lateral=True``, the default): a zone-plate z stage is never exactly
parallel to the optical axis, so refocusing moves the zone plate sideways and the
image walks across the detector. After finding the focus at each energy the plan
takes one in-focus frame (stream ``lateral``), measures its displacement against
the first energy's in-focus frame (:func:`~multiscope.analysis.focus.image_displacement_px`,
edges only, so the contrast change across an absorption edge does not bias it) and
turns it into the zone-plate x/y that puts the image back
(:func:`~multiscope.analysis.focus.zone_plate_correction_um`, with the pixel size
read from ``energy.pixel_size`` at that frame); the calibration then also holds
``zp_x``/``zp_y`` (absolute positions, mm, as every calibration axis). With
``check_lateral`` the optics visit every energy again through the calibrated
energy axis, one frame each (stream ``lateral_check``), and the remaining
displacement is recorded (stream ``lateral_residual``).

Examples
--------
>>> RE(focus_calibration(camera, energy, shutter, [8.25, 8.35, 8.45],
...                      zp_z_range_mm=0.4, zp_z_step_mm=0.1))   # doctest: +SKIP
>>> energy.focus_calibration().covers                           # doctest: +SKIP
(8.25, 8.45)
"""

import logging
import math

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from ophyd import Signal

from ..analysis.focus import (
    DETECTOR_MODES,
    SHARPNESS_METRICS,
    find_focus_peak,
    focus_offsets_mm,
    image_displacement_px,
    sharpness,
    zone_plate_correction_um,
)
from ..analysis.optics import FocusCalibration, focal_length_mm, lens_distances_mm
from ..frame_files import FrameReader
from ..plan_stubs.frames import acquire_frame, take_frames
from ..plan_stubs.safe_state import safe_state_decorator, txm_safe_state
from ..plan_stubs.xanes import BLOCK_OVERHEAD_S, estimate_moves_s
from .preflight import (
    MAX_RUN_DURATION_S,
    PlanArgumentError,
    format_duration,
    require_camera,
    require_duration_within,
    require_int,
    require_number,
    require_parts,
    require_positioner,
    require_positions_within_limits,
    require_shutter,
    sample_md,
)
from .tomography import _FRAME_OVERHEAD_S

__all__ = ["focus_calibration"]

logger = logging.getLogger(__name__)

#: Data key of the soft signal holding the energy's index in a calibration run.
FOCUS_INDEX_FIELD = "focus_energy_index"
_RESULT_FIELDS = ("energy_keV", "zp_z_mm", "det_z_mm", "zp_z_offset_mm", "det_z_offset_mm",
                  "peak_sharpness")  # fmt: skip
#: Extra ``focus`` fields of a lateral calibration: image displacement against the
#: reference energy (px, columns +right / rows +down), pixel size, zone-plate x/y (mm).
_LATERAL_FIELDS = ("shift_x_px", "shift_y_px", "pixel_size_um", "zp_x_mm", "zp_y_mm")
_RESIDUAL_FIELDS = ("energy_keV", "residual_x_px", "residual_y_px")
#: What the plan uses of the energy device (the TXM's ``TXMEnergy``) before the run.
_ENERGY_PARTS = ("name", "set", "energy.limits", "mono", "zp_z", "det_z", "zp_diameter_um",
                 "zp_outermost_zone_nm", "magnification", "calibration")  # fmt: skip


class FocusNotFoundError(RuntimeError):
    """The sharpest frame of a scan is at its edge: the scan does not bracket the focus."""


class _FrameGrabber:
    """Frames and zone-plate readbacks of the running plan's ``primary`` events.

    Subscribed for the run (``bpp.subs_wrapper``): frames come inline in events
    (in-process cameras) or from the detector files that ``stream_resource`` /
    ``stream_datum`` documents name (read once the camera is unstaged and its
    file closed). :meth:`take` returns the last scan's.
    """

    def __init__(self, image_key: str, position_key: str, stream: str = "primary"):
        self.image_key, self.position_key, self.stream = image_key, position_key, stream
        self._descriptors: set[str] = set()
        self._frames = FrameReader()
        self._resources: set[str] = set()
        self._datums: list[dict] = []
        self._inline: list[np.ndarray] = []
        self._positions: list[float] = []

    def __call__(self, name, doc):
        if name == "descriptor" and doc.get("name") == self.stream:
            self._descriptors.add(doc["uid"])
        elif name == "stream_resource" and doc.get("data_key") == self.image_key:
            self._resources.add(doc["uid"])
            self._frames.add_resource(doc)
        elif name == "stream_datum" and doc.get("stream_resource") in self._resources:
            self._datums.append(doc)
        elif name == "event" and doc["descriptor"] in self._descriptors:
            self._positions.append(float(doc["data"][self.position_key]))
            if self.image_key in doc["data"]:
                self._inline.append(np.asarray(doc["data"][self.image_key], dtype=float))

    def _read(self, datum: dict) -> list[np.ndarray]:
        rows = self._frames.read(datum).data
        num_events = int(datum["indices"]["stop"]) - int(datum["indices"]["start"])
        # One image per event: the mean of the frames of one trigger.
        return list(rows.astype(float).reshape(num_events, -1, *rows.shape[1:]).mean(axis=1))

    def take(self, num: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, frames) of the last ``num`` events, in order; forgets everything.

        Only the last ``num`` count: after a pause or suspension the RunEngine replays
        the scan from its checkpoint, and the events before it are repeated.
        """
        try:
            frames = self._inline or [f for d in self._datums
                                      if d["descriptor"] in self._descriptors
                                      for f in self._read(d)]  # fmt: skip
        finally:
            self._frames.close_files()  # the scan's files are done with
        positions = np.asarray(self._positions, dtype=float)
        self._inline, self._datums, self._positions = [], [], []
        if len(frames) != positions.size or positions.size < num:
            raise RuntimeError(f"{len(frames)} frames for {positions.size} events, need {num}")
        return positions[-num:], np.asarray(frames[-num:])


def _position(energy, axis: str) -> float:
    """Readback of ``energy.<axis>``, refused (PlanArgumentError) when it has none."""
    motor = getattr(energy, axis, None)
    position = None if motor is None else motor.position
    if position is None or not math.isfinite(float(position)):
        raise PlanArgumentError(
            f"lateral calibration needs {energy.name}.{axis} with a position (got {position!r}); "
            "pass lateral=False to calibrate the focus only"
        )
    return float(position)


def _thin_lens(energy, energies) -> tuple[np.ndarray, np.ndarray, dict]:
    """Thin-lens (zp_z, det_z) at each energy (mm), and the optics used."""
    optics = {
        "zp_diameter_um": energy.zp_diameter_um.get(),
        "zp_outermost_zone_nm": energy.zp_outermost_zone_nm.get(),
        "magnification": energy.magnification.get(),
    }
    for key, value in optics.items():
        require_number(f"{energy.name}.{key}", value, minimum=0, exclusive_minimum=True)
    optics = {key: float(value) for key, value in optics.items()}
    f = focal_length_mm(optics["zp_diameter_um"], optics["zp_outermost_zone_nm"], energies)
    p, q = lens_distances_mm(np.asarray(f, dtype=float), optics["magnification"])
    return p, p + q, optics


def focus_calibration(
    camera,
    energy,
    shutter,
    energies_keV,
    *,
    zp_z_range_mm: float = 0.4,
    zp_z_step_mm: float = 0.1,
    exposure_s: float = 0.05,
    metric: str = "normalized_variance",
    fit_window: int = 2,
    detector: str = "fixed",
    lateral: bool = True,
    check_lateral: bool = True,
    sample_id: str = "",
    max_duration_s: float = MAX_RUN_DURATION_S,
    md: dict | None = None,
):
    """Measure the zone-plate focus at a few energies and write the focus calibration.

    With the sample in the beam on a feature-rich field, at each energy: mono and
    detector to the thin-lens positions, then ``zp_z`` from ``p - range`` to
    ``p + range`` every ``step`` (one frame each, approached from one side), the
    sharpness of each frame, the sub-step peak (least-squares parabola through
    the best frame and ``fit_window`` on each side). The offsets from the thin
    lens (:func:`~multiscope.analysis.focus.focus_offsets_mm`) at every energy
    make the new :class:`~multiscope.analysis.optics.FocusCalibration`, written
    to ``energy.calibration`` at the end; the optics then go back, in focus, to
    the starting energy (clipped to the calibrated range). The previous
    calibration stays if the plan fails.

    Parameters
    ----------
    camera : StreamingCamera
        Area detector; ``cam.acquire_time`` is set to ``exposure_s``.
    energy : TXMEnergy
        Energy pseudo axis; its real axes ``mono``, ``zp_z`` and ``det_z`` are moved.
    shutter : Movable
        Opened for the scan, closed at the end.
    energies_keV : sequence of float
        Calibration energies, strictly increasing, >= 2 (the calibration covers
        their range; XANES grids must lie inside it).
    zp_z_range_mm, zp_z_step_mm : float
        Half-width and step of the zone-plate scan around the thin lens (mm);
        the range holds >= 2 steps on each side.
    exposure_s : float
        Exposure per frame (s), > 0.
    metric : {"normalized_variance", "brenner"}
        Sharpness metric (:data:`~multiscope.analysis.focus.SHARPNESS_METRICS`).
    fit_window : int
        Frames on each side of the sharpest one in the peak fit (>= 1).
    detector : {"fixed", "magnification"}
        How the detector offsets follow (:func:`~multiscope.analysis.focus.focus_offsets_mm`).
    lateral : bool
        Also calibrate the zone plate's x/y so the image stays where it is at the
        first energy (module docstring); needs ``energy.zp_x``, ``zp_y`` and
        ``pixel_size``. False: ``zp_z``/``det_z`` only, as before.
    check_lateral : bool
        With ``lateral``: revisit every energy with the new calibration and record
        the remaining image displacement (one frame per energy).
    sample_id : str
        Sample identifier.
    max_duration_s : float
        Longest estimated run accepted (s); default
        :data:`~multiscope.plans.preflight.MAX_RUN_DURATION_S` (a day).
    md : dict, optional
        Metadata merged over the plan's own.

    Raises
    ------
    PlanArgumentError
        Before any message: a device without what the plan uses of it, a bad
        argument, an energy outside the optics' range, a scan position outside an
        axis's limits, a run estimated beyond ``max_duration_s``.
    FocusNotFoundError
        During the run, if a scan's sharpest frame is at its edge (widen the range).
    """
    require_camera("camera", camera)
    require_parts("energy", energy, _ENERGY_PARTS, "the energy pseudo axis (TXMEnergy)")
    for axis in ("mono", "zp_z", "det_z"):
        require_positioner(f"energy.{axis}", getattr(energy, axis))
    require_shutter("shutter", shutter)
    if isinstance(energies_keV, str | bytes) or not hasattr(energies_keV, "__len__"):
        raise PlanArgumentError(f"energies_keV must be a list of energies, got {energies_keV!r}")
    energies = np.asarray([require_number("energies_keV", e) for e in energies_keV], float)
    if energies.size < 2 or np.any(np.diff(energies) <= 0):
        raise PlanArgumentError(
            f"energies_keV must hold >= 2 strictly increasing energies, got {energies.tolist()}"
        )
    low, high = energy.energy.limits
    if not low < high or energies[0] < low or energies[-1] > high:
        raise PlanArgumentError(
            f"energies_keV {energies.tolist()} outside the optics' range [{low}, {high}] keV "
            f"({energy.name} limits); nothing was moved"
        )
    span = require_number("zp_z_range_mm", zp_z_range_mm, minimum=0, exclusive_minimum=True)
    step = require_number("zp_z_step_mm", zp_z_step_mm, minimum=0, exclusive_minimum=True)
    half = math.floor(span / step + 1e-9)
    if half < 2:
        raise PlanArgumentError(f"zp_z_range_mm {span} must hold >= 2 steps of {step} mm")
    exposure_s = require_number("exposure_s", exposure_s, minimum=0, exclusive_minimum=True)
    # The scan's frames alone, before its positions are built (the full estimate follows).
    scan_frames_s = energies.size * (2 * half + 1) * (exposure_s + _FRAME_OVERHEAD_S)
    require_duration_within("focus_calibration", scan_frames_s, max_duration_s)
    offsets = step * np.arange(-half, half + 1)
    if metric not in SHARPNESS_METRICS:
        raise PlanArgumentError(
            f"metric must be one of {sorted(SHARPNESS_METRICS)}, got {metric!r}"
        )
    fit_window = require_int("fit_window", fit_window, minimum=1, maximum=half)
    if detector not in DETECTOR_MODES:
        raise PlanArgumentError(f"detector must be one of {DETECTOR_MODES}, got {detector!r}")
    sample_md(sample_id)
    for key, flag in (("lateral", lateral), ("check_lateral", check_lateral)):
        if not isinstance(flag, bool):
            raise PlanArgumentError(f"{key} must be True or False, got {flag!r}")
    check_lateral = lateral and check_lateral
    if lateral:
        zp_xy0_um = [_position(energy, axis) for axis in ("zp_x", "zp_y")]
        orientation = np.asarray(getattr(energy, "zp_image_orientation", ()), dtype=float)
        if orientation.shape != (2, 2) or abs(np.linalg.det(orientation)) < 1e-6:
            raise PlanArgumentError(
                f"{energy.name}.zp_image_orientation must be an invertible 2 x 2 matrix"
            )
        if getattr(energy, "pixel_size", None) is None:
            raise PlanArgumentError(
                f"lateral calibration needs {energy.name}.pixel_size (nm); pass lateral=False "
                "to calibrate the focus only"
            )
    zp_thin, det_thin, optics = _thin_lens(energy, energies)
    require_positions_within_limits("energies_keV", energy.mono, energies)
    require_positions_within_limits("det_z at the thin lens", energy.det_z, det_thin)
    require_positions_within_limits(
        "zp_z scan", energy.zp_z, np.add.outer(zp_thin, offsets).ravel()
    )
    home = float(np.clip(energy.mono.position, energies[0], energies[-1]))

    num_points = energies.size * offsets.size
    extra_frames = energies.size * (int(lateral) + int(check_lateral))
    frames_s = (num_points + extra_frames) * (exposure_s + _FRAME_OVERHEAD_S)
    # Per energy the zone plate goes back to the scan's start, then step by step across it.
    scan_s = energies.size * estimate_moves_s(energy.zp_z, [2 * span, *offsets + span])
    moves_s = max(estimate_moves_s(energy.mono, energies), estimate_moves_s(energy.det_z, det_thin))
    blocks = energies.size * (1 + int(lateral) + int(check_lateral))
    # the check pass revisits every energy (out and back): twice the energy moves again
    moves_s *= 1 + 2 * int(check_lateral)
    estimate = frames_s + scan_s + moves_s + blocks * BLOCK_OVERHEAD_S
    require_duration_within("focus_calibration", estimate, max_duration_s)
    logger.info("focus_calibration: %d energies x %d zp_z positions, estimated %s",
                energies.size, offsets.size, format_duration(estimate))  # fmt: skip
    image_key = getattr(camera, "image_key", f"{camera.name}_image")
    block = {
        "energies_keV": energies.tolist(), "zp_z_offsets_mm": offsets.tolist(),
        "zp_z_step_mm": step, "thin_lens_zp_z_mm": zp_thin.tolist(),
        "thin_lens_det_z_mm": det_thin.tolist(), **optics, "metric": metric,
        "fit_window": fit_window, "detector": detector, "image_field": image_key,
        "position_field": energy.zp_z.name, "energy_index_field": FOCUS_INDEX_FIELD,
        "previous_calibration": energy.calibration.get(),
        "lateral": None,
    }  # fmt: skip
    if lateral:
        # Enough to recompute zp_x/zp_y from the catalog: frames in `lateral`, pixel
        # sizes in `focus`, the zone plate's start and the image's response here.
        block["lateral"] = {
            "reference_index": 0, "stream": "lateral", "zp_x0_um": zp_xy0_um[0],
            "zp_y0_um": zp_xy0_um[1], "zp_image_orientation": orientation.tolist(),
            "registration": "image_displacement_px", "registration_sigma_px": 1.0,
            "check": check_lateral,
            "check_streams": ["lateral_check", "lateral_residual"] if check_lateral else [],
        }  # fmt: skip
    start = {
        "plan_name": "focus_calibration",
        "detectors": [camera.name],
        "motors": [energy.zp_z.name],
        "num_points": num_points,
        "num_intervals": num_points - 1,
        "plan_args": {"energies_keV": energies.tolist(), "zp_z_range_mm": span,
                      "zp_z_step_mm": step, "exposure_s": exposure_s, "metric": metric,
                      "detector": detector},
        "hints": {"dimensions": [([energy.zp_z.name], "primary")]},
        "estimated_duration_s": round(estimate, 3),
        **sample_md(sample_id),
        "focus_calibration": block,
    }  # fmt: skip
    start.update(md or {})

    # Soft signals of this run only (never module globals).
    index = Signal(name=FOCUS_INDEX_FIELD, value=0)
    fields = _RESULT_FIELDS + (_LATERAL_FIELDS if lateral else ())
    results = {key: Signal(name=f"focus_{key}", value=0.0) for key in fields}
    residuals = {key: Signal(name=f"focus_{key}", value=0.0) for key in _RESIDUAL_FIELDS}
    grabber = _FrameGrabber(image_key, energy.zp_z.name)
    in_focus = _FrameGrabber(image_key, energy.zp_z.name, stream="lateral")
    checked = _FrameGrabber(image_key, energy.zp_z.name, stream="lateral_check")
    reference = []  # the first energy's in-focus frame

    def one_frame(stream, frames):
        yield from take_frames(camera, 1, stream, also_read=[energy, index])
        return frames.take(1)[1][0]

    def lateral_shift(i, peak_zp_z):
        """In-focus frame at energy i; (displacement rows/cols px, pixel um, zp x/y um)."""
        yield from bps.mv(energy.zp_z, peak_zp_z)
        frame = yield from one_frame("lateral", in_focus)
        pixel_um = float((yield from bps.rd(energy.pixel_size))) / 1000.0
        if i == 0:
            reference[:] = [frame]
        shift = image_displacement_px(reference[0], frame)
        move = zone_plate_correction_um(shift, pixel_um, optics["magnification"], orientation)
        return shift, pixel_um, np.asarray(zp_xy0_um) + move

    acquire_time = getattr(getattr(camera, "cam", None), "acquire_time", None)

    def scan(i):
        yield from bps.checkpoint()
        yield from bps.mv(index, i)
        yield from bps.mv(energy.mono, energies[i], energy.det_z, det_thin[i],
                          energy.zp_z, zp_thin[i] + offsets[0])  # fmt: skip
        yield from bps.stage(camera)  # the scan's frames in one file
        for k, offset in enumerate(offsets):
            step = bps.mv(energy.zp_z, zp_thin[i] + offset)
            yield from acquire_frame(camera, k, [energy, index], "primary", before=step)
        yield from bps.unstage(camera)
        positions, frames = grabber.take(offsets.size)
        peak = find_focus_peak(positions, sharpness(frames, metric), window=fit_window)
        if peak.at_edge:
            raise FocusNotFoundError(
                f"at {energies[i]} keV the sharpest frame is at the scan's edge "
                f"(zp_z {peak.position:.4f} mm): widen zp_z_range_mm or check the sample"
            )
        zp_off, det_off = focus_offsets_mm(peak.position, det_thin[i], zp_thin[i], det_thin[i],
                                           optics["magnification"], detector)  # fmt: skip
        values = [energies[i], peak.position, det_thin[i], zp_off, det_off, peak.value]
        zp_xy_um = (math.nan, math.nan)
        if lateral:
            shift, pixel_um, zp_xy_um = yield from lateral_shift(i, peak.position)
            values += [shift[1], shift[0], pixel_um, zp_xy_um[0] / 1e3, zp_xy_um[1] / 1e3]
            logger.info("image at %.4f keV displaced by (%+.2f, %+.2f) px (x, y): zone "
                        "plate to (%.3f, %.3f) um", energies[i], shift[1], shift[0],
                        *zp_xy_um)  # fmt: skip
        for key, value in zip(fields, values, strict=True):
            yield from bps.mv(results[key], float(value))
        yield from bps.trigger_and_read(list(results.values()), name="focus")
        logger.info("focus at %.4f keV: zp_z %.4f mm (thin lens %+.4f mm)",
                    energies[i], peak.position, zp_off)  # fmt: skip
        return zp_off, det_off, zp_xy_um[0] / 1e3, zp_xy_um[1] / 1e3

    def check(i):
        """Energy i through the calibrated axis: the image's remaining displacement."""
        yield from bps.checkpoint()
        yield from bps.mv(index, i)
        yield from bps.mv(energy, energies[i])
        frame = yield from one_frame("lateral_check", checked)
        residual = image_displacement_px(reference[0], frame)
        for key, value in zip(_RESIDUAL_FIELDS, (energies[i], residual[1], residual[0]),
                              strict=True):  # fmt: skip
            yield from bps.mv(residuals[key], float(value))
        yield from bps.trigger_and_read(list(residuals.values()), name="lateral_residual")
        logger.info("after calibration at %.4f keV the image is off by (%+.2f, %+.2f) px",
                    energies[i], residual[1], residual[0])  # fmt: skip

    def body():
        if acquire_time is not None:
            yield from bps.mv(acquire_time, exposure_s)
        yield from bps.mv(shutter, "open")
        found = []
        for i in range(energies.size):
            found.append((yield from scan(i)))
        table = {"zp_z": [f[0] for f in found], "det_z": [f[1] for f in found]}
        if lateral:
            table.update(zp_x=[f[2] for f in found], zp_y=[f[3] for f in found])
        calibration = FocusCalibration(energies.tolist(), table)
        yield from bps.mv(energy.calibration, calibration.to_dict())
        if check_lateral:
            for i in range(energies.size):
                yield from check(i)
        yield from bps.mv(energy, home)  # in focus again, with the new calibration
        yield from bps.mv(shutter, "close")

    # On every exit the shutter closes and the camera stops and gets its exposure back,
    # before the stop document; the optics stay where the scan left them (docs/txm.md).
    @bpp.run_decorator(md=start)
    @safe_state_decorator(txm_safe_state(shutter, camera=camera))
    def run():
        yield from bpp.subs_wrapper(body(), [grabber, in_focus, checked])

    return (yield from run())
