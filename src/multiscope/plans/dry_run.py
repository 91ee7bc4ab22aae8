"""What a plan will do, without doing it: duration, frames, disk, moves, checks.

``dry_run(tomo_scan(cam, sample, shutter, num_projections=181, exposure_s=0.05))``
runs the plan's generator under :class:`bluesky.simulators.RunEngineSimulator`:
nothing is set, triggered, staged or opened. The simulator answers the messages a
plan needs answers to: a ``read`` or ``locate`` with the device's present reading
(a read of a connected device, nothing moves), the rest with what the RunEngine
would hand back (a finished status, a run uid). Summarised:

duration
    the plans' own estimates, ``estimated_duration_s`` of each run's ``open_run``
    metadata (the numbers the plans check ``max_duration_s`` against);
frames and disk
    frames per camera (``trigger`` x frames per trigger, ``kickoff`` x a flyer's
    ``num_frames``) and the detector files they make at the camera's present frame
    size; for tomography runs, the reconstruction the session's pipeline writes;
moves
    every ``set`` per axis: how many, from where to where;
checks
    the plan's argument checks (they ran: a refusal raises here, as in ``RE``) and
    every target against its axis's soft limits (``check_value``).
"""

import math
import uuid
from collections import defaultdict
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from typing import Any

from .preflight import PlanArgumentError, format_duration

__all__ = ["DryRun", "dry_run"]

# A reconstruction is stored float32, compressed (about 0.85 of its size measured on
# the demo's volumes: noise compresses little); the dry run states the upper bound.
_RECONSTRUCTION_BYTES_PER_VOXEL = 4


@dataclass
class AxisMoves:
    """The ``set`` messages of one axis."""

    count: int = 0
    lowest: float = math.inf
    highest: float = -math.inf

    def add(self, target) -> None:  # noqa: D102
        self.count += 1
        if isinstance(target, int | float) and math.isfinite(target):
            self.lowest = min(self.lowest, float(target))
            self.highest = max(self.highest, float(target))


@dataclass
class DryRun:
    """A plan's summary; ``print(dry_run(plan))`` shows it.

    Attributes
    ----------
    plan_names : list of str
        ``plan_name`` of each run the plan opens, in order.
    estimated_duration_s : float
        Sum of the runs' ``estimated_duration_s`` (NaN if a run has none).
    frames : dict
        Frames per camera.
    frame_bytes : dict
        Bytes per frame of each camera (its present size; 2-byte pixels).
    reconstruction_bytes : int
        Upper bound of the tomography reconstructions written (float32 volumes).
    moves : dict of AxisMoves
        Per axis name.
    limit_problems : list of str
        Targets outside an axis's soft limits (empty: all within).
    messages : int
        Messages the plan emitted.
    stopped_early : str or None
        Why the plan could not be followed to its end (an adaptive plan, such as
        ``focus_calibration``, analyses frames a dry run does not take): the summary
        covers its messages until then; the duration is still the plan's estimate.
    """

    plan_names: list[str] = field(default_factory=list)
    estimated_duration_s: float = 0.0
    frames: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    frame_bytes: dict[str, int] = field(default_factory=dict)
    reconstruction_bytes: int = 0
    moves: dict[str, AxisMoves] = field(default_factory=lambda: defaultdict(AxisMoves))
    limit_problems: list[str] = field(default_factory=list)
    messages: int = 0
    stopped_early: str | None = None

    @property
    def detector_bytes(self) -> int:
        """Bytes of detector files the frames make (before HDF5 overhead)."""
        return sum(n * self.frame_bytes.get(camera, 0) for camera, n in self.frames.items())

    @property
    def disk_bytes(self) -> int:
        """Detector files and reconstructions together."""
        return self.detector_bytes + self.reconstruction_bytes

    def __str__(self) -> str:
        runs = ", ".join(self.plan_names) or "none"
        duration = (
            format_duration(self.estimated_duration_s)
            if math.isfinite(self.estimated_duration_s)
            else "unknown (a run records no estimate)"
        )
        lines = [
            f"dry run: {len(self.plan_names)} run(s) ({runs}), {self.messages} messages",
            f"  duration  ~{duration} (the plans' estimates)",
        ]
        for camera, n in self.frames.items():
            size = self.frame_bytes.get(camera)
            per = f" of {_megabytes(size)}" if size else ""
            lines.append(f"  frames    {camera}: {n}{per}")
        writes = f"  disk      ~{_megabytes(self.detector_bytes)} of detector files"
        if self.reconstruction_bytes:
            writes += f" + up to {_megabytes(self.reconstruction_bytes)} of reconstructions"
        lines.append(writes)
        for axis, moves in self.moves.items():
            span = (
                f" from {moves.lowest:.6g} to {moves.highest:.6g}"
                if moves.lowest <= moves.highest
                else ""
            )
            lines.append(f"  moves     {axis}: {moves.count}{span}")
        if self.stopped_early:
            lines.append(
                "  note      followed until the plan needed data a dry run does not take "
                f"({self.stopped_early}); counts cover the messages until then"
            )
        lines.append("  checks    arguments: passed")
        if self.limit_problems:
            lines += [f"  checks    OUTSIDE LIMITS: {p}" for p in self.limit_problems]
        else:
            lines.append("  checks    every target within its axis's soft limits")
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle) -> None:  # IPython shows the summary
        printer.text(str(self))


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def _frame_shape(camera) -> tuple[int, int] | None:
    """(rows, columns) of the camera's frames now, or None (not an area detector)."""
    try:
        return (
            int(camera.cam.array_size.array_size_y.get()),
            int(camera.cam.array_size.array_size_x.get()),
        )
    except Exception:  # not connected, or not an area detector
        return None


def _simulator():
    """A RunEngineSimulator answering what plans ask of the RunEngine."""
    from bluesky.simulators import RunEngineSimulator
    from ophyd.status import Status

    def done(_msg):
        status = Status()
        status.set_finished()
        return status

    def read(msg):
        try:
            return msg.obj.read()
        except Exception:  # a disconnected device: the plan sees no reading
            return {}

    def locate(msg):
        try:
            return msg.obj.locate()
        except Exception:
            position = getattr(msg.obj, "position", None)
            return {"setpoint": position, "readback": position}

    simulator = RunEngineSimulator()
    for command, answer in [
        ("set", done),
        ("trigger", done),
        ("kickoff", done),
        ("prepare", done),
        ("complete", done),
        ("read", read),
        ("locate", locate),
        ("open_run", lambda msg: str(uuid.uuid4())),
        ("stage", lambda msg: [msg.obj]),
        ("unstage", lambda msg: [msg.obj]),
        ("rewindable", lambda msg: True),
        ("configure", lambda msg: ({}, {})),
        ("collect", lambda msg: []),
        ("subscribe", lambda msg: 0),
    ]:
        simulator.add_handler(command, answer)
    return simulator


def _tally(summary: DryRun, messages: Iterable) -> None:
    frames_per_trigger: dict[Any, int] = {}
    prepared_frames: dict[Any, int] = {}  # a flyer's num_frames from its prepare message
    shapes: dict[str, tuple[int, int] | None] = {}
    tomography_cameras: list[str] = []  # one per tomography run

    def saw_camera(camera, name: str, n: int) -> None:
        summary.frames[name] += n
        if name not in shapes:
            shapes[name] = _frame_shape(camera)
            if shapes[name] is not None:
                summary.frame_bytes[name] = shapes[name][0] * shapes[name][1] * 2

    for msg in messages:
        summary.messages += 1
        obj = msg.obj
        if msg.command == "open_run":
            md = msg.kwargs
            summary.plan_names.append(md.get("plan_name", "?"))
            summary.estimated_duration_s += float(md.get("estimated_duration_s", math.nan))
            if md.get("tomo") and md.get("detectors"):
                tomography_cameras.append(md["detectors"][0])
        elif msg.command == "set" and obj is not None:
            target = msg.args[0] if msg.args else None
            if getattr(obj, "name", "").endswith("images_per_trigger"):
                frames_per_trigger[obj] = int(target)
            else:
                if hasattr(obj, "position"):  # an axis; settings (signals) are not moves
                    summary.moves[obj.name].add(target)
                _check_limit(summary, obj, target)
        elif msg.command == "trigger" and hasattr(obj, "cam"):  # a camera
            per_trigger = getattr(obj, "images_per_trigger", None)
            per = frames_per_trigger.get(per_trigger)
            if per is None:
                per = 1 if per_trigger is None else int(per_trigger.get())
            saw_camera(obj, obj.name, per)
        elif msg.command == "prepare" and isinstance(msg.args[0] if msg.args else None, dict):
            if "num_frames" in msg.args[0]:
                prepared_frames[obj] = int(msg.args[0]["num_frames"])
        elif msg.command == "kickoff" and hasattr(obj, "num_frames"):
            camera = getattr(obj, "camera", obj)
            n = prepared_frames.get(obj, obj.num_frames)
            saw_camera(camera, getattr(camera, "name", obj.name), int(n or 0))
    for camera_name in tomography_cameras:
        # The session's pipeline reconstructs rows x columns x columns voxels.
        shape = shapes.get(camera_name)
        if shape is not None:
            summary.reconstruction_bytes += (
                shape[0] * shape[1] * shape[1] * _RECONSTRUCTION_BYTES_PER_VOXEL
            )


def _check_limit(summary: DryRun, axis, target) -> None:
    check = getattr(axis, "check_value", None)
    if check is None or not isinstance(target, int | float):
        return
    try:
        check(target)
    except Exception as exc:  # LimitError, ValueError: what the RunEngine would meet
        summary.limit_problems.append(f"{axis.name} -> {target}: {exc}")


def dry_run(plan: Generator) -> DryRun:
    """Run ``plan``'s messages without hardware and summarise them.

    Parameters
    ----------
    plan : generator
        A plan, e.g. ``tomo_scan(cam, sample, shutter, num_projections=181)``.

    Returns
    -------
    DryRun
        Printed (or shown by IPython), a summary of duration, frames, disk,
        moves and checks.

    Raises
    ------
    PlanArgumentError
        As the plan would inside ``RE(...)``.
    """
    from bluesky.preprocessors import msg_mutator

    summary = DryRun()
    messages: list = []

    def record(msg):
        messages.append(msg)
        return msg

    try:
        _simulator().simulate_plan(msg_mutator(iter(plan), record))
    except PlanArgumentError:
        raise
    except Exception as exc:  # an adaptive plan analyses data a dry run does not take
        summary.stopped_early = f"{type(exc).__name__}: {exc}"
    _tally(summary, messages)
    summary.frames = dict(summary.frames)
    summary.moves = dict(summary.moves)
    return summary
