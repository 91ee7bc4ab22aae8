"""XANES plans for the TXM: images of one field at energies across an absorption edge.

Each energy move goes through the energy pseudo axis, which moves the
monochromator, the zone plate and the detector together, so every image is in
focus at the same magnification (thin lens plus the measured focus calibration,
:mod:`multiscope.plans.calibration`). The documents follow
``docs/decisions/0006-xanes-run-documents.md``, the contract with the live
chemical-state map:

===========  ===================================================================
``dark``     shutter closed, at the start (image only)
``flat``     sample out, at the energies the flat policy picks (image, energy
             readback, ``xanes_energy_index``)
``primary``  sample frames (the same fields; ``xanes_3d`` adds the rotation angle)
===========  ===================================================================

plus a ``xanes`` block in the start document (grid, windows, flat policy, data
keys). Every argument (the grid against the optics' range, the calibration and
every real axis's limits; the filter name; the flat policy) is checked, and the
duration estimated, before the first message.

Examples
--------
>>> grid = energy_grid("Ni")                                       # 63 energies
>>> RE(xanes_2d(camera, energy, sample, shutter, grid, exposure_s=0.1,
...             flat_policy="interpolate", flat_every=8))          # doctest: +SKIP
>>> RE(xanes_campaign(camera, energy, sample, shutter, [
...     {"grid": "Mn", "exposure_s": 0.2},
...     {"grid": "Ni", "exposure_s": 0.1, "filter": "Al_50um"}]))  # doctest: +SKIP
"""

import logging
import math
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp

from ..contracts import TomoBlock, XanesBlock
from ..plan_stubs.frames import take_darks
from ..plan_stubs.safe_state import safe_state_decorator, txm_safe_state
from ..plan_stubs.txm import move_energy
from ..plan_stubs.xanes import (
    BLOCK_OVERHEAD_S,
    ENERGY_INDEX_FIELD,
    FILTERS,
    EnergyGrid,
    build_energy_grid,
    check_energies,
    energy_index_signal,
    estimate_energy_moves_s,
    estimate_moves_s,
    flat_indices,
    xanes_energy_point,
)
from .mosaic import _replay_first
from .preflight import (
    MAX_RUN_DURATION_S,
    PlanArgumentError,
    field_of_view_um,
    format_duration,
    require_camera,
    require_duration_within,
    require_int,
    require_number,
    require_out_of_field,
    require_parts,
    require_positioner,
    require_positions_within_limits,
    require_shutter,
    sample_md,
)
from .tomography import (
    _FRAME_OVERHEAD_S,
    FLY_FLAT_POLICIES,
    FlySweep,
    fly_camera,
    fly_sweep,
    fly_tomogram,
    step_tomogram,
    tomo_schedule,
)

__all__ = ["energy_grid", "xanes_2d", "xanes_3d", "xanes_campaign"]

logger = logging.getLogger(__name__)


@contextmanager
def _refused():
    """Re-raise a building block's ValueError (LimitError too) as a PlanArgumentError."""
    try:
        yield
    except PlanArgumentError:
        raise
    except ValueError as error:
        raise PlanArgumentError(str(error)) from None


def energy_grid(edge: str, **kwargs) -> EnergyGrid:
    """Energies across an absorption edge, with the analysis windows (keV).

    Coarse pre-edge, fine edge and whiteline, coarse post-edge steps relative to
    the edge (defaults: -50..-20 eV every 5, -15..24 every 1, 25..100 every 5: 63
    energies across the Ni K-edge), or an explicit ``energies_keV`` list; see
    :func:`multiscope.plan_stubs.xanes.build_energy_grid` for every keyword.

    Raises
    ------
    PlanArgumentError
        Unknown edge, bad steps or regions, a non-increasing list, a window
        holding too few energies.
    """
    with _refused():
        return build_energy_grid(edge, **kwargs)


def _grid(grid) -> EnergyGrid:
    if isinstance(grid, str):
        return energy_grid(grid)
    if not isinstance(grid, EnergyGrid):
        raise PlanArgumentError(f"grid must be energy_grid(...) or an edge name, got {grid!r}")
    return grid


@dataclass(frozen=True)
class _Checked:
    """The arguments every XANES plan shares, validated."""

    grid: EnergyGrid
    exposure_s: float
    num_flats: int
    num_darks: int
    flats_at: tuple[int, ...]
    x_in: float
    x_out: float
    flat_policy: str
    flat_every: int | None
    filter: str
    pixel_size_um: float | None
    sample_id: str
    energy_moves_s: float  # estimate of all energy moves
    out_in_s: float  # estimate of one sample out-and-in


#: What the XANES plans use of the energy device (the TXM's ``TXMEnergy``).
_ENERGY_PARTS = ("name", "set", "check_value", "focus_calibration", "energy.limits", "energy.name")


def _check_devices(camera, energy, sample, shutter, *, rotates: bool) -> None:
    """Check the devices by what the XANES plans use of them (raises PlanArgumentError)."""
    require_camera("camera", camera)
    require_parts("energy", energy, _ENERGY_PARTS, "the energy pseudo axis (TXMEnergy)")
    axes = ("x", "theta") if rotates else ("x",)
    require_parts("sample", sample, axes, f"a sample stage ({', '.join(axes)})")
    for axis in axes:
        require_positioner(f"sample.{axis}", getattr(sample, axis))
    require_shutter("shutter", shutter)


def _pixel_um(energy, pixel_size_um: float | None) -> float | None:
    """The pixel at the sample (um): ``pixel_size_um``, else the optics' (``energy.pixel_size``)."""
    if pixel_size_um is not None:
        return pixel_size_um
    try:
        pixel_nm = float(energy.pixel_size.get())
    except Exception:  # no pixel size: the field of view is taken as the widest
        return None
    return pixel_nm / 1000.0 if math.isfinite(pixel_nm) and pixel_nm > 0 else None


def _check(camera, energy, sample, grid, exposure_s, num_flats, num_darks, flat_policy,
           flat_every, sample_out_offset_um, filter, pixel_size_um, sample_id, *, plan_name,
           frames_per_energy, max_duration_s):  # fmt: skip
    """Check the arguments every XANES plan shares (raises PlanArgumentError).

    The frames alone (``frames_per_energy`` at every energy) are checked against
    ``max_duration_s`` before anything goes through the grid; the plan checks its
    full estimate later.
    """
    grid = _grid(grid)
    exposure_s = require_number("exposure_s", exposure_s, minimum=0, exclusive_minimum=True)
    frames_s = len(grid) * frames_per_energy * (exposure_s + _FRAME_OVERHEAD_S)
    require_duration_within(plan_name, frames_s, max_duration_s)
    with _refused():
        check_energies(energy, grid.energies_keV)
        flats_at = flat_indices(len(grid), flat_policy, flat_every)
    num_flats = require_int("num_flats", num_flats, minimum=1)
    num_darks = require_int("num_darks", num_darks, minimum=1)
    offset = require_number("sample_out_offset_um", sample_out_offset_um)
    if offset == 0:
        raise PlanArgumentError("sample_out_offset_um must be non-zero (flats move the sample out)")
    if pixel_size_um is not None:
        require_number("pixel_size_um", pixel_size_um, minimum=0, exclusive_minimum=True)
    field_um = field_of_view_um(camera, _pixel_um(energy, pixel_size_um))
    require_out_of_field("sample_out_offset_um", offset, field_um)
    x_in = float(sample.x.position)
    require_positions_within_limits("sample_out_offset_um", sample.x, [x_in + offset])
    if filter not in FILTERS:
        raise PlanArgumentError(f"filter must be one of {sorted(FILTERS)}, got {filter!r}")
    sample_md(sample_id)
    return _Checked(
        grid, exposure_s, num_flats, num_darks, flats_at, x_in, x_in + offset, flat_policy,
        flat_every, filter, pixel_size_um, sample_id,
        estimate_energy_moves_s(energy, grid.energies_keV),
        estimate_moves_s(sample.x, [x_in + offset, x_in], start=x_in),
    )  # fmt: skip


def _start_md(plan_name, camera, energy, c: _Checked, *, num_frames, num_points, estimate_s,
              plan_args, md) -> dict:  # fmt: skip
    block = XanesBlock(
        **c.grid.to_md(), flat_policy=c.flat_policy,
        flat_every=1 if c.flat_policy == "every" else int(c.flat_every),
        num_frames=num_frames, num_flats=c.num_flats, num_darks=c.num_darks,
        image_field=getattr(camera, "image_key", f"{camera.name}_image"),
        energy_field=energy.energy.name, energy_index_field=ENERGY_INDEX_FIELD,
        pixel_size_um=c.pixel_size_um, sample_id=c.sample_id,
    ).to_md()  # fmt: skip
    start = {
        "plan_name": plan_name,
        "detectors": [camera.name],
        "motors": [energy.energy.name],
        "num_points": num_points,
        "num_intervals": num_points - 1,
        "plan_args": {"edge": c.grid.edge, "num_energies": len(c.grid),
                      "exposure_s": c.exposure_s, "flat_policy": c.flat_policy,
                      "flat_every": c.flat_every, "filter": c.filter, **plan_args},
        "hints": {"dimensions": [([energy.energy.name], "primary")]},
        "estimated_duration_s": round(estimate_s, 3),
        **sample_md(c.sample_id),
        "filter": c.filter,
        "xanes": block,
    }  # fmt: skip
    start.update(md or {})
    logger.info("%s: %s edge, %d energies, %d points, estimated %s", plan_name, c.grid.edge,
                len(c.grid), num_points, format_duration(estimate_s))  # fmt: skip
    return start


def _set_exposure_and_darks(camera, shutter, c: _Checked):
    acquire_time = getattr(getattr(camera, "cam", None), "acquire_time", None)
    if acquire_time is not None:
        yield from bps.mv(acquire_time, c.exposure_s)
    yield from bps.mv(shutter, "open")
    yield from take_darks(camera, shutter, c.num_darks)


def xanes_2d(
    camera,
    energy,
    sample,
    shutter,
    grid,
    *,
    exposure_s: float = 0.05,
    num_frames: int = 1,
    flat_policy: str = "every",
    flat_every: int | None = None,
    num_flats: int = 5,
    num_darks: int = 5,
    sample_out_offset_um: float = 300.0,
    filter: str = "none",
    pixel_size_um: float | None = None,
    sample_id: str = "",
    max_duration_s: float = MAX_RUN_DURATION_S,
    md: dict | None = None,
):
    """2D XANES: at each energy, refocus, take flats (by policy) and sample frames; one run.

    Parameters
    ----------
    camera : StreamingCamera
        Area detector; its ``cam.acquire_time`` is set to ``exposure_s``.
    energy : TXMEnergy
        Energy pseudo axis: mono, zone plate and detector move together, in focus.
    sample : SampleStage
        ``x`` (um) moves the sample out of the beam for flats and back.
    shutter : Movable
        ``set("open")`` / ``set("close")``; closed for darks.
    grid : EnergyGrid or str
        From :func:`energy_grid`; an edge name takes its default grid.
    exposure_s : float
        Exposure per frame (s), > 0.
    num_frames : int
        Sample frames per energy (>= 1).
    flat_policy : {"every", "every_n", "interpolate"}
        Flats at every energy; at indices 0, N, 2N...; or those and the last one
        (the analysis interpolates the flat in energy between the sets around
        each energy).
    flat_every : int, optional
        N, with ``"every_n"`` and ``"interpolate"``.
    num_flats, num_darks : int
        Frames per flat set, and dark frames at the start (>= 1).
    sample_out_offset_um : float
        How far ``sample.x`` moves for flats (um; limits checked): at least the field
        of view's width (the camera's columns x the pixel: ``pixel_size_um``, else
        ``energy.pixel_size``; else the TXM's widest field).
    filter : str
        Attenuator setting, a key of :data:`multiscope.plan_stubs.xanes.FILTERS`,
        recorded in the start document (the TXM has no filter device to move).
    pixel_size_um : float, optional
        Recorded in the ``xanes`` block.
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
        Before any message: a device without what the plan uses of it; any invalid
        argument; an energy outside the optics' range, outside the focus
        calibration, or needing a real axis past its limits; a sample-out offset
        inside the field of view; a run estimated beyond ``max_duration_s``.
    """
    _check_devices(camera, energy, sample, shutter, rotates=False)
    num_frames = require_int("num_frames", num_frames, minimum=1)
    c = _check(camera, energy, sample, grid, exposure_s, num_flats, num_darks, flat_policy,
               flat_every, sample_out_offset_um, filter, pixel_size_um, sample_id,
               plan_name="xanes_2d", frames_per_energy=num_frames,
               max_duration_s=max_duration_s)  # fmt: skip
    frames = c.num_darks + len(c.flats_at) * c.num_flats + len(c.grid) * num_frames
    blocks = 1 + len(c.flats_at) + len(c.grid)  # one detector file each
    estimate = frames * (c.exposure_s + _FRAME_OVERHEAD_S) + c.energy_moves_s
    estimate += len(c.flats_at) * c.out_in_s + blocks * BLOCK_OVERHEAD_S
    require_duration_within("xanes_2d", estimate, max_duration_s)
    start = _start_md(
        "xanes_2d", camera, energy, c, num_frames=num_frames,
        num_points=len(c.grid) * num_frames, estimate_s=estimate,
        plan_args={"num_frames": num_frames}, md=md,
    )  # fmt: skip
    index = energy_index_signal()  # one per run, never a module global

    # On every exit the shutter closes, the camera stops and gets its settings back and the
    # sample returns in-beam, before the stop document; the RunEngine then unstages.
    @bpp.run_decorator(md=start)
    @safe_state_decorator(txm_safe_state(shutter, camera=camera, sample=sample))
    def run():
        yield from _set_exposure_and_darks(camera, shutter, c)
        for i, e in enumerate(c.grid.energies_keV):
            yield from xanes_energy_point(
                camera, energy, sample.x, index, i, e, num_frames=num_frames,
                num_flats=c.num_flats if i in c.flats_at else 0, x_in=c.x_in, x_out=c.x_out,
            )  # fmt: skip
        yield from bps.mv(shutter, "close")

    return (yield from run())


def xanes_3d(
    camera,
    energy,
    sample,
    shutter,
    grid,
    *,
    num_projections: int = 181,
    angle_range_deg: float = 180.0,
    start_deg: float = 0.0,
    exposure_s: float = 0.05,
    flat_policy: str = "every",
    flat_every: int | None = None,
    tomo_flat_policy: str = "both",
    tomo_flat_every: int | None = None,
    num_flats: int = 5,
    num_darks: int = 5,
    sample_out_offset_um: float = 300.0,
    filter: str = "none",
    pixel_size_um: float | None = None,
    center_guess_px: float | None = None,
    scan_mode: str = "step",
    frame_period_s: float | None = None,
    max_velocity_deg_s: float | None = None,
    flyer=None,
    sample_id: str = "",
    max_duration_s: float = MAX_RUN_DURATION_S,
    md: dict | None = None,
):
    """3D XANES: a tomogram (step or fly) at each energy, all in one run (decision 0006).

    Darks once at the start; at each energy: set the index, refocus, then a
    tomogram with flat sets where ``tomo_flat_policy`` puts them if ``flat_policy``
    picks this energy, none otherwise. The start document has the ``xanes`` block
    (``num_frames`` = projections per energy) and the tomography plans' ``tomo``
    block, whose ``scan_mode`` says which kind of tomogram:

    ``"step"``
        The tomography plans' own step tomogram
        (:func:`~multiscope.plans.tomography.step_tomogram`): ``primary`` events
        carry the image, the rotation angle (data key ``tomo.rotation``), the
        energy readback and ``xanes_energy_index``.
    ``"fly"``
        As :func:`~multiscope.plans.tomography.fly_tomo_scan`: the rotation sweeps
        the range at constant speed while the camera free-runs
        (:class:`~multiscope.devices.flyers.FlyingCamera`, one file per energy);
        ``primary`` holds exactly ``num_projections`` collected frames per energy,
        in energy order (``<camera>_image``, and the angle at mid-exposure
        ``<camera>_theta`` from the frames' HDF5 attribute ``theta``), no events;
        an ``xanes_energy`` event per energy (before its tomogram) carries the
        energy readbacks and ``xanes_energy_index``. The rotation's speed is
        restored after every sweep, also on failure.

    Parameters
    ----------
    camera, energy, sample, shutter, grid, exposure_s, flat_policy, flat_every
        As :func:`xanes_2d`; ``sample.theta`` rotates.
    num_projections, angle_range_deg, start_deg
        Per energy, as :func:`~multiscope.plans.tomography.tomo_schedule`.
    tomo_flat_policy : {"start", "end", "both", "every"}
        Where flat sets go inside a tomogram that takes flats.
    tomo_flat_every : int, optional
        With ``tomo_flat_policy="every"``.
    num_flats, num_darks, sample_out_offset_um, filter, pixel_size_um, sample_id
        As :func:`xanes_2d`.
    max_duration_s, md
        As :func:`xanes_2d`.
    center_guess_px : float, optional
        Recorded in the ``tomo`` block.
    scan_mode : {"step", "fly"}
        Step tomograms, or fly tomograms (``tomo_flat_policy`` then ``"start"``,
        ``"end"`` or ``"both"``: flats would interrupt the rotation).
    frame_period_s, max_velocity_deg_s, flyer
        Fly only, as :func:`~multiscope.plans.tomography.fly_tomo_scan`.

    Raises
    ------
    PlanArgumentError
        Before any message, as :func:`xanes_2d`, and for angles (fly: the whole
        sweep, run-up included) outside the limits or a rotation faster than allowed.
    """
    _check_devices(camera, energy, sample, shutter, rotates=True)
    if flyer is not None:
        require_parts("flyer", flyer, ("kickoff", "complete", "describe_collect"),
                      "a flyer (kickoff, complete, describe_collect)")  # fmt: skip
    num_projections = require_int("num_projections", num_projections, minimum=2)
    c = _check(camera, energy, sample, grid, exposure_s, num_flats, num_darks, flat_policy,
               flat_every, sample_out_offset_um, filter, pixel_size_um, sample_id,
               plan_name="xanes_3d", frames_per_energy=num_projections,
               max_duration_s=max_duration_s)  # fmt: skip
    if scan_mode not in ("step", "fly"):
        raise PlanArgumentError(f'scan_mode must be "step" or "fly", got {scan_mode!r}')
    if tomo_flat_policy == "none":
        raise PlanArgumentError('tomo_flat_policy="none" contradicts the XANES flat policy')
    fly = scan_mode == "fly"
    if fly and tomo_flat_policy not in FLY_FLAT_POLICIES:
        raise PlanArgumentError(
            f"tomo_flat_policy must be one of {FLY_FLAT_POLICIES[:-1]} for fly tomograms, "
            f"got {tomo_flat_policy!r}"
        )
    if not fly and (frame_period_s, max_velocity_deg_s, flyer) != (None, None, None):
        raise PlanArgumentError(
            'frame_period_s, max_velocity_deg_s and flyer are for scan_mode="fly" only'
        )
    with_flats = tomo_schedule(num_projections, angle_range_deg, start_deg=start_deg,
                               flat_policy=tomo_flat_policy, flat_every=tomo_flat_every,
                               dark_policy="none")  # fmt: skip
    without = tomo_schedule(num_projections, angle_range_deg, start_deg=start_deg,
                            flat_policy="none", dark_policy="none")  # fmt: skip
    if center_guess_px is not None:
        require_number("center_guess_px", center_guess_px)
    sweep = None
    if fly:
        sweep = fly_sweep(sample.theta, num_projections, float(angle_range_deg),
                          float(start_deg), c.exposure_s, frame_period_s,
                          max_velocity_deg_s)  # fmt: skip
    n, flat_sets = len(c.grid), len(c.flats_at) * with_flats.num_flat_sets
    step_frames = c.num_darks + flat_sets * c.num_flats
    estimate = c.energy_moves_s + flat_sets * c.out_in_s
    if fly:
        # Per energy: back to the run-up start at full speed, then the sweep.
        back_s = estimate_moves_s(sample.theta, [sweep.start_deg])
        estimate += step_frames * (c.exposure_s + _FRAME_OVERHEAD_S) + n * (
            back_s + sweep.duration_s
        )
        estimate += (1 + n + flat_sets) * BLOCK_OVERHEAD_S
    else:
        frames = step_frames + n * num_projections
        back_s = estimate_moves_s(sample.theta, [start_deg + angle_range_deg, start_deg])
        step_deg = with_flats.angle_range_deg / num_projections  # the angles are not built yet
        steps_s = estimate_moves_s(sample.theta, [0.0, step_deg]) * num_projections
        blocks = 1 + n + 2 * flat_sets  # each flat set splits a tomogram's projections
        estimate += frames * (c.exposure_s + _FRAME_OVERHEAD_S) + n * (back_s + steps_s)
        estimate += blocks * BLOCK_OVERHEAD_S
    require_duration_within("xanes_3d", estimate, max_duration_s)
    require_positions_within_limits("angles", sample.theta, with_flats.angles_deg)  # now built
    extra = {"scan_mode": scan_mode}
    if fly:
        extra.update(frame_period_s=sweep.period_s, theta_velocity_deg_s=sweep.velocity)
    tomo_md = TomoBlock(
        num_projections=num_projections, angle_range_deg=float(angle_range_deg),
        start_deg=float(start_deg), exposure_s=c.exposure_s, num_darks=c.num_darks,
        num_flats=c.num_flats, flat_policy=tomo_flat_policy, flat_every=tomo_flat_every,
        dark_policy="start", sample_out_offset_um=c.x_out - c.x_in,
        pixel_size_um=pixel_size_um, energy_keV=None, center_guess_px=center_guess_px,
        sample_id=sample_id, rotation=sample.theta.name, **extra,
    ).to_md()  # fmt: skip
    plan_args = {"num_projections": num_projections, "angle_range_deg": angle_range_deg,
                 "tomo_flat_policy": tomo_flat_policy, "scan_mode": scan_mode}  # fmt: skip
    if fly:
        plan_args["frame_period_s"] = sweep.period_s
    start = _start_md(
        "xanes_3d", camera, energy, c, num_frames=num_projections,
        num_points=n * num_projections, estimate_s=estimate, md={"tomo": tomo_md, **(md or {})},
        plan_args=plan_args,
    )  # fmt: skip
    index = energy_index_signal()
    if fly:
        flyer = fly_camera(camera, flyer, num_projections, sweep.period_s,
                           getattr(sample, "rotation_trigger", None))  # fmt: skip

    # As xanes_2d; a fly tomogram's flyer and rotation stop and the rotation's speed comes back.
    @bpp.run_decorator(md=start)
    @safe_state_decorator(txm_safe_state(shutter, camera=camera, sample=sample, flyer=flyer))
    def run():
        yield from _set_exposure_and_darks(camera, shutter, c)
        for i, e in enumerate(c.grid.energies_keV):
            yield from bps.checkpoint()
            yield from bps.mv(index, i)
            yield from move_energy(energy, e)
            schedule = with_flats if i in c.flats_at else without
            if fly:
                yield from _fly_tomogram(
                    camera, sample, shutter, flyer, sweep, schedule, c, also_read=[energy, index],
                    declare=i == 0,
                )  # fmt: skip
            else:
                yield from step_tomogram(
                    camera, sample, shutter, schedule, num_darks=0, num_flats=c.num_flats,
                    x_in=c.x_in, x_out=c.x_out, also_read=[energy, index],
                )  # fmt: skip
        yield from bps.mv(shutter, "close")

    return (yield from run())


def _fly_tomogram(camera, sample, shutter, flyer, sweep: FlySweep, schedule, c: _Checked, *,
                  also_read, declare):  # fmt: skip
    """One energy's fly tomogram inside an open run, shutter open (a plan fragment).

    Its energy readbacks (the collected frames carry none), then
    :func:`~multiscope.plans.tomography.fly_tomogram`: flats before and/or after as
    ``schedule`` says, no darks (taken once per run).
    """
    yield from bps.trigger_and_read(list(also_read), name="xanes_energy")
    yield from fly_tomogram(camera, sample, shutter, flyer, sweep, schedule, num_darks=0,
                            num_flats=c.num_flats, x_in=c.x_in, x_out=c.x_out,
                            also_read=also_read, declare=declare)  # fmt: skip


def xanes_campaign(
    camera,
    energy,
    sample,
    shutter,
    edges,
    *,
    dimensions: str = "2d",
    campaign_id: str | None = None,
    sample_id: str = "",
    md: dict | None = None,
    **common,
):
    """Several edges, one XANES run each, all sharing a ``campaign_id``.

    Every run's arguments (grid, filter, exposure, reachability) are checked
    before the first message; then the runs follow in the order given.

    Parameters
    ----------
    camera, energy, sample, shutter
        As :func:`xanes_2d`.
    edges : sequence of dict
        One per edge: ``"grid"`` (EnergyGrid or edge name, required) and any
        keyword of the plan, overriding ``common``: typically ``"exposure_s"``
        and ``"filter"``.
    dimensions : {"2d", "3d"}
        :func:`xanes_2d` or :func:`xanes_3d` runs.
    campaign_id : str, optional
        Shared identifier (default: a new uuid).
    sample_id : str
        The sample of every run (an edge's own ``"sample_id"`` overrides it).
    md : dict, optional
        Metadata merged into every run's start document.
    **common
        Keywords for every run (``num_frames``, ``flat_policy``...).

    Returns
    -------
    list of str
        The runs' uids, in order.
    """
    plan = {"2d": xanes_2d, "3d": xanes_3d}.get(dimensions)
    if plan is None:
        raise PlanArgumentError(f'dimensions must be "2d" or "3d", got {dimensions!r}')
    if (
        isinstance(edges, str | dict)
        or not hasattr(edges, "__iter__")
        or not (edges := list(edges))
    ):
        raise PlanArgumentError("edges must be a non-empty list of dicts, one per edge")
    if campaign_id is None:
        campaign_id = str(uuid.uuid4())
    elif not isinstance(campaign_id, str) or not campaign_id:
        raise PlanArgumentError(f"campaign_id must be a non-empty string, got {campaign_id!r}")
    if "md" in common or any(isinstance(e, dict) and "md" in e for e in edges):
        raise PlanArgumentError("pass metadata as md=, once, for every run")
    names = []
    for k, edge in enumerate(edges):
        if not isinstance(edge, dict) or "grid" not in edge:
            raise PlanArgumentError(f"edges[{k}] must be a dict with a 'grid', got {edge!r}")
        try:
            names.append(_grid(edge["grid"]).edge)
        except PlanArgumentError as error:
            raise PlanArgumentError(f"edges[{k}]: {error}") from None
    runs = []
    for k, edge in enumerate(edges):
        campaign = {"index": k, "num_runs": len(edges), "edges": names}
        run_md = {**(md or {}), "campaign_id": campaign_id, "campaign": campaign}
        try:
            keywords = {"sample_id": sample_id, **common, **edge}
            generator = plan(camera, energy, sample, shutter, **keywords, md=run_md)
            first = next(generator)  # runs the plan's checks; nothing reaches the RunEngine
        except (TypeError, PlanArgumentError) as error:  # TypeError: an unknown keyword
            raise PlanArgumentError(f"edges[{k}] ({names[k]}): {error}") from None
        runs.append((generator, first))
    logger.info("xanes_campaign %s: %d runs (%s)", campaign_id, len(runs), ", ".join(names))
    uids = []
    for generator, first in runs:
        uids.append((yield from _replay_first(generator, first)))
    return uids
