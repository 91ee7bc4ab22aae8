"""Serial sectioning on the PFIB-SEM: slice and view, kintsugi, and resume without re-milling.

Per slice ``k`` (seed 004's loop, automated): go to ``mill``, mill slice ``k``, go to
``sem`` with the CBS in, scan CBS + TLD together, measure the fiducial's drift and
shift the beam to cancel it, swap the CBS for the EDS detector and map the elements
when due, go to ``sims`` and map the lithium when due. At the end the stage goes back
to ``eucentric`` and the milled depth is read. Streams: ``mill`` (one event per cut),
``sem``, ``eds``, ``sims`` (frames in HDF5), ``depth`` (the end); every event records
the slice number, the face depth, the pose, the stage angles, the ion beam's state
and the beam shift (the run contract :class:`multiscope.contracts.SliceViewBlock`).

Nothing is milled twice (``plan_stubs.fibsem``): the instrument numbers the cuts
and refuses a repeated one, and the RunEngine never rewinds into a cut. A run that
ended part-way (a crash of the client, an abort, a restart of the instrument) is
continued by ``slice_and_view(pfib, ..., resume=<uid of the first run>)``: it reads
the instrument's slice count and face depth and the series' documents (from the
session's journal, through the RunEngine command :data:`SERIES_COMMAND`), images the
last milled face if no run did, and mills on from the next slice; the new run names
the first in ``resume_of``.
"""

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.utils import Msg
from ophyd import Signal

from multiscope.analysis.fibsem_geometry import (
    ChamberGeometry,
    ChamberLimits,
    StageState,
    plan_pose_move,
)
from multiscope.analysis.serial import slice_drift
from multiscope.checks import require_int, require_number
from multiscope.contracts import SliceViewBlock
from multiscope.devices.fibsem import PARTS
from multiscope.frame_files import FrameReader
from multiscope.plan_stubs.fibsem import (
    Chamber,
    deposit_pt,
    go_to_pose,
    mill_slice,
    polish_cut,
    set_ion_beam,
)
from multiscope.plan_stubs.frames import acquire_frame
from multiscope.plan_stubs.safe_state import fibsem_safe_state, safe_state_decorator
from multiscope.plans.preflight import (
    MAX_RUN_DURATION_S,
    PlanArgumentError,
    format_duration,
    require_duration_within,
    sample_md,
)

__all__ = [
    "SERIES_COMMAND",
    "KintsugiError",
    "SeriesProgress",
    "estimate_slice_and_view_s",
    "kintsugi_face",
    "series_progress",
    "slice_and_view",
]

logger = logging.getLogger(__name__)

#: RunEngine command a session registers: ``Msg(SERIES_COMMAND, None, uid)`` returns
#: the documents ``[(name, doc), ...]`` of the run ``uid`` and of every run that
#: continues it (``resume_of``), in order.
SERIES_COMMAND = "series_documents"

#: Stage settling, refocus and finding the region again at each pose (instrument s):
#: with seed 004's maps (5 min EDS, 5 min SIMS) this makes its 39 slices take ~12 h.
POSE_CHANGE_OVERHEAD_S = 120.0
#: Default fiducial window (rows, columns of the SEM frame): the Pt cap with the "X".
DEFAULT_FIDUCIAL = (0, 48, 0, 160)
#: The Pt precursor's working temperature (C): deposition waits for it.
PRECURSOR_C = 44.0
#: A kintsugi is repeated before the face comes closer than this to the unfilled pores.
KINTSUGI_MARGIN_UM = 0.1


class KintsugiError(RuntimeError):
    """The face is not flat and Pt-filled after a kintsugi (a cap left, no pores filled)."""


# ---------------------------------------------------------------------- pure helpers


def estimate_slice_and_view_s(
    n_slices: int,
    *,
    cut_s: float,
    sem_frame_s: float,
    eds_live_time_s: float,
    sims_frame_time_s: float,
    eds_every: int = 1,
    sims_every: int = 1,
    first_slice: int = 1,
    kintsugi_s: float = 0.0,
    pose_change_s: float = POSE_CHANGE_OVERHEAD_S,
) -> float:
    """Instrument seconds of a slice-and-view series: cuts, scans, maps and pose changes.

    Each slice changes pose to ``mill`` and ``sem`` (and ``sims`` when a SIMS map is
    due); every change costs ``pose_change_s``. Seed 004 (39 slices, 5 min per EDS
    and SIMS map) comes out at ~12 h.
    """
    total = float(kintsugi_s)
    for number in range(first_slice, first_slice + n_slices):
        total += cut_s + sem_frame_s + 2 * pose_change_s
        if eds_every and number % eds_every == 0:
            total += eds_live_time_s
        if sims_every and number % sims_every == 0:
            total += sims_frame_time_s + pose_change_s
    return total


@dataclass
class SeriesProgress:
    """What the documents of a series say was done.

    Attributes
    ----------
    block : SliceViewBlock
        The first run's contract.
    first_uid : str
    imaged : dict
        ``{stream: set of slice numbers}`` with a frame in that stream.
    milled : set of int
        Slice numbers whose cut was recorded.
    reference : tuple or None
        ``(stream_resource, datum)`` of the series' first SEM frame (the fiducial's
        reference), when the documents have it.
    runs : list of str
        The uids of the series' runs, in order.
    """

    block: SliceViewBlock
    first_uid: str
    imaged: dict = field(default_factory=dict)
    milled: set = field(default_factory=set)
    reference: tuple | None = None
    runs: list = field(default_factory=list)


def series_progress(documents: Sequence[tuple[str, dict]]) -> SeriesProgress:
    """Read a series' documents (first run first): its contract, what was milled and imaged."""
    progress = None
    streams: dict[str, str] = {}
    resources: dict[str, dict] = {}
    for name, doc in documents:
        if name == "start":
            if progress is None:
                if "slice_and_view" not in doc:
                    raise PlanArgumentError(
                        f"run {doc.get('uid')} is not a slice_and_view run "
                        f"(plan {doc.get('plan_name')!r}): nothing to resume"
                    )
                block = SliceViewBlock.from_md(doc["slice_and_view"])
                progress = SeriesProgress(block=block, first_uid=doc["uid"])
            progress.runs.append(doc["uid"])
        elif progress is None:
            continue
        elif name == "descriptor":
            streams[doc["uid"]] = doc["name"]
        elif name == "stream_resource":
            resources[doc["uid"]] = doc
        elif name == "stream_datum":
            if streams.get(doc["descriptor"]) == "sem" and progress.reference is None:
                resource = resources.get(doc["stream_resource"])
                if resource is not None:
                    progress.reference = (resource, doc)
        elif name in ("event", "event_page"):
            stream = streams.get(doc["descriptor"])
            numbers = doc["data"].get("slice_number")
            if stream is None or numbers is None:
                continue
            numbers = numbers if isinstance(numbers, list) else [numbers]
            target = progress.milled if stream == "mill" else progress.imaged.setdefault(
                stream, set()
            )  # fmt: skip
            target.update(int(n) for n in numbers)
    if progress is None:
        raise PlanArgumentError("no start document among the series' documents")
    return progress


def _due(number: int, every: int) -> bool:
    return bool(every) and number % every == 0


# --------------------------------------------------------------------------- checks


def _check_pfib(pfib) -> None:
    missing = [part for part in PARTS if getattr(pfib, part, None) is None]
    if missing:
        raise PlanArgumentError(f"pfib must be the PFIB-SEM (missing {missing}): got {pfib!r}")


def _check_fiducial(fiducial, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    if fiducial is None:
        return None
    try:
        row0, row1, col0, col1 = (int(v) for v in fiducial)
    except (TypeError, ValueError):
        raise PlanArgumentError(
            f"fiducial must be (row0, row1, col0, col1) in SEM pixels, got {fiducial!r}"
        ) from None
    ny, nx = shape
    if (
        not (0 <= row0 < row1 <= ny and 0 <= col0 < col1 <= nx)
        or min(row1 - row0, col1 - col0) < 16
    ):
        raise PlanArgumentError(
            f"fiducial window {fiducial!r} must lie in the {ny} x {nx} SEM frame and be at "
            "least 16 x 16 px"
        )
    return row0, row1, col0, col1


def _check_reachable(chamber: Chamber, need_sims: bool, need_eds: bool) -> None:
    """Every pose the run visits is reachable from here with what it inserts (no motion)."""
    stage = chamber.stage
    try:
        here = StageState(float(stage.tilt.position), float(stage.rot.position),
                          float(stage.x.position), float(stage.y.position),
                          float(stage.z.position), frozenset())  # fmt: skip
    except Exception as error:  # noqa: BLE001 - a stage that does not answer
        raise PlanArgumentError(f"the stage does not answer: {error}") from None
    visits = [("mill", ()), ("sem", ("cbs",))]
    if need_eds:
        visits.append(("sem", ("eds",)))
    if need_sims:
        visits.append(("sims", ()))
    visits.append(("eucentric", ()))
    for pose, insert in visits:
        try:
            steps = plan_pose_move(here, chamber.poses[pose], insert=frozenset(insert),
                                   limits=chamber.limits)  # fmt: skip
        except ValueError as error:
            raise PlanArgumentError(f"pose {pose!r} is not reachable: {error}") from None
        for step in steps:
            for axis, value in (("tilt", step.after.tilt_deg), ("rot", step.after.rotation_deg)):
                low, high = getattr(stage, axis).limits
                if low != high and not low <= value <= high:
                    raise PlanArgumentError(
                        f"pose {pose!r} needs {axis} {value:g}, outside its soft limits "
                        f"[{low:g}, {high:g}]"
                    )
        if steps:
            here = steps[-1].after


@dataclass(frozen=True)
class _Settings:
    """The checked arguments of one slice_and_view run."""

    n_slices: int
    thickness_um: float
    eds_every: int
    sims_every: int
    kintsugi: bool
    fiducial: tuple | None
    drift_correction: bool
    sem_dwell_us: float
    eds_live_time_s: float
    sims_frame_time_s: float
    mill_current_na: float
    sims_current_na: float
    mill_box_um: tuple[float, float]
    rock_deg: float
    pt_thickness_um: float
    polish_um: float


def _check_settings(pfib, n_slices, slice_thickness_um, **kw) -> _Settings:
    n = require_int("n_slices", n_slices, minimum=1)
    thickness = require_number("slice_thickness_um", slice_thickness_um, minimum=0,
                               exclusive_minimum=True)  # fmt: skip
    try:
        reach = float(pfib.mill.max_thickness_um.get())
    except Exception:  # noqa: BLE001 - checked again by the instrument
        reach = math.inf
    if thickness > reach:
        raise PlanArgumentError(
            f"slice_thickness_um {thickness:g} is beyond the ion beam's reach per cut "
            f"({reach:g} um)"
        )
    width, height = (require_number("mill_box_um", v, minimum=0, exclusive_minimum=True)
                     for v in kw["mill_box_um"])  # fmt: skip
    shape = (int(pfib.sem.cam.array_size.array_size_y.get()),
             int(pfib.sem.cam.array_size.array_size_x.get()))  # fmt: skip
    return _Settings(
        n_slices=n, thickness_um=thickness,
        eds_every=require_int("eds_every", kw["eds_every"], minimum=0),
        sims_every=require_int("sims_every", kw["sims_every"], minimum=0),
        kintsugi=bool(kw["kintsugi"]),
        fiducial=_check_fiducial(kw["fiducial"], shape),
        drift_correction=bool(kw["drift_correction"]),
        sem_dwell_us=require_number("sem_dwell_us", kw["sem_dwell_us"], minimum=0,
                                    exclusive_minimum=True),
        eds_live_time_s=require_number("eds_live_time_s", kw["eds_live_time_s"], minimum=0,
                                       exclusive_minimum=True),
        sims_frame_time_s=require_number("sims_frame_time_s", kw["sims_frame_time_s"],
                                         minimum=0, exclusive_minimum=True),
        mill_current_na=require_number("mill_current_na", kw["mill_current_na"], minimum=0,
                                       exclusive_minimum=True, maximum=2500.0),
        sims_current_na=require_number("sims_current_na", kw["sims_current_na"], minimum=0,
                                       exclusive_minimum=True, maximum=2500.0),
        mill_box_um=(width, height),
        rock_deg=require_number("rock_deg", kw["rock_deg"], minimum=0, maximum=10.0),
        pt_thickness_um=require_number("pt_thickness_um", kw["pt_thickness_um"], minimum=0,
                                       exclusive_minimum=True, maximum=10.0),
        polish_um=require_number("polish_um", kw["polish_um"], minimum=0,
                                 exclusive_minimum=True, maximum=10.0),
    )  # fmt: skip


def _cut_time_s(pfib, settings: _Settings) -> float:
    """One cut's duration from the sample's sputter yield at the milling current."""
    try:
        sputter = float(pfib.mill.sputter_yield.get())
    except Exception:  # noqa: BLE001 - an estimate only
        sputter = 0.0
    if not sputter > 0:
        return 0.0
    width, height = settings.mill_box_um
    rocks = 2 if settings.rock_deg > 0 else 1
    volume = width * height * settings.thickness_um
    return rocks * volume / (sputter * settings.mill_current_na)


# ---------------------------------------------------------------------------- verbs


def _readers(pfib, slice_number: Signal) -> list:
    """What every event of the run records beside its frames."""
    return [slice_number, pfib.mill.face_depth_um, pfib.mill.slices_milled, pfib.stage.pose,
            pfib.stage.tilt, pfib.stage.rot, pfib.ion_column.beam,
            pfib.electron_column.beam_shift_x_um, pfib.electron_column.beam_shift_y_um]  # fmt: skip


class _DriftTracker:
    """Measures the fiducial's shift on each SEM frame and keeps the beam on the region.

    The reference is the series' first SEM frame (a resume reads it from the first
    run's file); the beam shift is set absolutely (a replayed set is harmless).
    """

    def __init__(self, pfib, settings: _Settings, pixel_um: float, reference=None):
        self.pfib, self.settings, self.pixel_um = pfib, settings, pixel_um
        self.reader = FrameReader(timeout=10.0)
        self.reference = None
        if reference is not None and settings.fiducial is not None:
            self.reference = self._cbs_of(*reference)

    def _cbs_of(self, resource: dict, datum: dict) -> np.ndarray | None:
        try:
            self.reader.add_resource(resource)
            block = self.reader.read(datum)
        except (OSError, KeyError, TimeoutError) as error:
            logger.warning("slice_and_view: fiducial reference unreadable (%s)", error)
            return None
        return np.asarray(block.data).reshape(-1, *block.data.shape[-2:])[0]

    def correct(self):
        """A plan: after an SEM frame, shift the beam to cancel the fiducial's drift."""
        if self.settings.fiducial is None or not self.settings.drift_correction:
            return
        last = self.pfib.sem.last_exposure()
        if last is None:
            return
        image = self._cbs_of(*last)
        if image is None:
            return
        if self.reference is None:
            self.reference = image
            return
        row0, row1, col0, col1 = self.settings.fiducial
        shift_px, _ = slice_drift(self.reference, image,
                                  fiducial=(slice(row0, row1), slice(col0, col1)))  # fmt: skip
        column = self.pfib.electron_column
        # ``shift_px`` brings this frame back onto the reference: the sample moved by
        # ``shift_px`` pixels' worth on the face, and the beam shift follows it (the
        # field's origin is the nominal one + drift - beam shift).
        dy_um, dx_um = (float(v) * self.pixel_um for v in shift_px)
        x0 = float((yield from bps.rd(column.beam_shift_x_um)))
        y0 = float((yield from bps.rd(column.beam_shift_y_um)))
        yield from bps.mv(column.beam_shift_x_um, x0 + dx_um, column.beam_shift_y_um, y0 + dy_um)

    def close(self) -> None:
        self.reader.close()


def _wait_for_precursor(gis, minimum_c: float = PRECURSOR_C, timeout_s: float = 600.0):
    """Wait (polling the reading) until the Pt precursor is at ``minimum_c``."""
    deadline = time.monotonic() + timeout_s
    while float((yield from bps.rd(gis.temperature))) < minimum_c:
        if time.monotonic() > deadline:
            raise KintsugiError(f"the Pt precursor did not reach {minimum_c} C in {timeout_s} s")
        yield from bps.sleep(0.05)


def _kintsugi(pfib, chamber: Chamber, pt_thickness_um: float, polish_um: float):
    """Deposit Pt on the face, polish it back, check the face is flat with pores filled.

    The polish removes the Pt cap left on the face and goes ``polish_um`` into the
    sample beyond it, inside the depth the Pt filled (seed 003: ~2 um of Pt, ~1.5 um
    back).
    """
    yield from go_to_pose(chamber, "sims", insert=("needle",))  # face to the ion beam
    yield from bps.mv(pfib.gis.heat, "On")
    yield from _wait_for_precursor(pfib.gis)
    yield from set_ion_beam(pfib.ion_column, "On")
    yield from deposit_pt(pfib.gis, pt_thickness_um)
    yield from set_ion_beam(pfib.ion_column, "Blanked")
    yield from bps.mv(pfib.gis.heat, "Off")
    yield from go_to_pose(chamber, "mill")  # retracts the needle first
    cap = float((yield from bps.rd(pfib.gis.cap_um)))
    yield from bps.mv(pfib.mill.polish_um, cap + polish_um)
    polish_number = int((yield from bps.rd(pfib.mill.polishes_done))) + 1
    yield from set_ion_beam(pfib.ion_column, "On")
    yield from polish_cut(pfib.mill, polish_number)
    yield from set_ion_beam(pfib.ion_column, "Blanked")
    cap = float((yield from bps.rd(pfib.gis.cap_um)))
    filled = float((yield from bps.rd(pfib.gis.filled_to_um)))
    depth = float((yield from bps.rd(pfib.mill.face_depth_um)))
    if cap > 1e-3 or filled <= depth:
        raise KintsugiError(
            f"after the polish: Pt cap {cap:.3f} um left on the face, pores filled to "
            f"{filled:.3f} um, face at {depth:.3f} um (want no cap, filled beyond the face)"
        )
    yield from bps.trigger_and_read([pfib.gis.filled_to_um, pfib.gis.cap_um,
                                     pfib.mill.face_depth_um], name="kintsugi")  # fmt: skip


def _needs_kintsugi(pfib, thickness_um: float):
    depth = float((yield from bps.rd(pfib.mill.face_depth_um)))
    filled = float((yield from bps.rd(pfib.gis.filled_to_um)))
    return depth + thickness_um > filled - KINTSUGI_MARGIN_UM


def _image_slice(pfib, chamber, settings, number, tags, drift: _DriftTracker,
                 streams=("sem", "eds")):  # fmt: skip
    """SEM (CBS + TLD) of the face and EDS when due, then the drift correction.

    The beam shift changes only after both, so the SEM frame and the EDS map of one
    slice share it (the assembler moves the EDS maps by the SEM frame's drift).
    """
    if "sem" in streams:
        yield from go_to_pose(chamber, "sem", insert=("cbs",))
        yield from acquire_frame(pfib.sem, number, tags, "sem")
    if "eds" in streams and _due(number, settings.eds_every):
        yield from go_to_pose(chamber, "sem", insert=("eds",))
        yield from acquire_frame(pfib.eds, number, tags, "eds")
    if "sem" in streams:
        yield from drift.correct()


def _sims_slice(pfib, chamber, settings, number, tags):
    if not _due(number, settings.sims_every):
        return
    yield from go_to_pose(chamber, "sims")
    yield from bps.mv(pfib.ion_column.current, settings.sims_current_na)
    yield from set_ion_beam(pfib.ion_column, "On")
    yield from acquire_frame(pfib.sims, number, tags, "sims")
    yield from set_ion_beam(pfib.ion_column, "Blanked")


def _configure(pfib, settings: _Settings):
    """The instrument's settings for the run (pattern, scan, map times)."""
    width, height = settings.mill_box_um
    sem_shape = (int(pfib.sem.cam.array_size.array_size_y.get()),
                 int(pfib.sem.cam.array_size.array_size_x.get()))  # fmt: skip
    yield from bps.mv(
        pfib.mill.width_um, width, pfib.mill.height_um, height,
        pfib.mill.thickness_um, settings.thickness_um, pfib.mill.rock_deg, settings.rock_deg,
        pfib.electron_column.dwell_us, settings.sem_dwell_us,
        pfib.sem.cam.acquire_time, settings.sem_dwell_us * 1e-6 * sem_shape[0] * sem_shape[1],
        pfib.eds.cam.acquire_time, settings.eds_live_time_s,
        pfib.sims.cam.acquire_time, settings.sims_frame_time_s,
    )  # fmt: skip


def _as_tuples(value):
    """JSON arrays (lists) as the tuples the chamber's dataclasses hold."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuples(v) for v in value)
    return value


def _like(given, usual) -> bool:
    """``given`` has the shape of the default ``usual``: a number, a pair, pairs of names."""
    if isinstance(usual, tuple):
        if not isinstance(given, tuple):
            return False
        if usual and isinstance(usual[0], tuple):  # pairs, any number of them
            return all(_like(g, usual[0]) for g in given)
        if len(given) != len(usual):
            return False
        return all(_like(g, u) for g, u in zip(given, usual, strict=True))
    if isinstance(usual, int | float) and not isinstance(usual, bool):
        return isinstance(given, int | float) and not isinstance(given, bool)
    return isinstance(given, type(usual))


def chamber_part(name: str, value, cls):
    """``geometry``/``limits`` as ``cls``: the default for None, or from a mapping of its fields.

    A queued item (the queueserver, JSON) gives a mapping of the dataclass's fields;
    lists become tuples. Unknown fields, or a value of the wrong shape for its field,
    are a :class:`PlanArgumentError` (the manager only checks the keys and that each
    value has one of the fields' types: ``multiscope.queueserver.annotations``).
    """
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise PlanArgumentError(f"{name} must be a {cls.__name__} or a mapping of its fields")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise PlanArgumentError(f"{name}: no field {unknown} in {cls.__name__} ({sorted(known)})")
    part = cls(**{key: _as_tuples(v) for key, v in value.items()})
    default = cls()
    for key in value:
        given, usual = getattr(part, key), getattr(default, key)
        if not _like(given, usual):
            raise PlanArgumentError(f"{name}.{key} = {given!r}: expected a value like {usual!r}")
    return part


# ---------------------------------------------------------------------------- plans


def slice_and_view(
    pfib,
    n_slices: int,
    slice_thickness_um: float,
    *,
    eds_every: int = 1,
    sims_every: int = 1,
    kintsugi: bool = False,
    fiducial: tuple[int, int, int, int] | None = DEFAULT_FIDUCIAL,
    drift_correction: bool = True,
    sem_dwell_us: float = 3.0,
    eds_live_time_s: float = 300.0,
    sims_frame_time_s: float = 300.0,
    mill_current_na: float = 4.0,
    sims_current_na: float = 1.0,
    mill_box_um: tuple[float, float] = (30.0, 20.0),
    rock_deg: float = 3.0,
    pt_thickness_um: float = 2.0,
    polish_um: float = 1.5,
    resume: str | None = None,
    sample_id: str = "",
    geometry: ChamberGeometry | Mapping[str, object] | None = None,
    limits: ChamberLimits | Mapping[str, object] | None = None,
    max_duration_s: float = MAX_RUN_DURATION_S,
    md: dict | None = None,
):
    """Serial sectioning: ``n_slices`` cuts of ``slice_thickness_um``, each face imaged.

    Parameters
    ----------
    pfib : PFIBSEM
        The chamber (``instruments.fibsem.pfib``).
    n_slices : int
        Slices to mill (>= 1). With ``resume``, the series' total (the first run's).
    slice_thickness_um : float
        Nominal thickness of one cut (> 0, within the beam's reach per cut).
    eds_every, sims_every : int
        Map slice ``k`` when ``k % every == 0`` (1: every slice; 0: never).
    kintsugi : bool
        Infiltrate the pores with Pt before the first slice and again whenever the
        face nears the unfilled pores (:func:`kintsugi_face`).
    fiducial : (row0, row1, col0, col1) or None
        Window of the SEM frame holding the fiducial mark; None: no drift correction.
    drift_correction : bool
        Shift the beam after each SEM frame to cancel the fiducial's drift.
    sem_dwell_us, eds_live_time_s, sims_frame_time_s : float
        Scan dwell; EDS live time per map; SIMS time per map (instrument seconds).
    mill_current_na, sims_current_na : float
        Ion current for milling and for SIMS.
    mill_box_um : (width, height)
        The milling pattern on the face.
    rock_deg : float
        Rocking polish: each cut is made at +rock and -rock (0: none).
    pt_thickness_um, polish_um : float
        Kintsugi's Pt deposit, and how far its polish goes into the sample beyond the
        Pt left on the face.
    resume : str, optional
        Start uid of the series' first run: continue it at the next unmilled slice.
    sample_id : str
    geometry, limits : ChamberGeometry, ChamberLimits or mapping, optional
        The chamber's geometry and collision rules (defaults: seed 004's chamber); a
        mapping of their fields (a queued item's JSON) is turned into one.
    max_duration_s : float
        Longest estimated run accepted (instrument seconds).
    md : dict, optional

    Raises
    ------
    PlanArgumentError
        Before anything moves: a bad argument, a pose not reachable, a slice beyond
        the beam's reach, a run estimated beyond ``max_duration_s``, a ``resume`` that
        is not a slice-and-view series or asks for other settings.
    """
    _check_pfib(pfib)
    sample_md(sample_id)
    settings = _check_settings(
        pfib, n_slices, slice_thickness_um, eds_every=eds_every, sims_every=sims_every,
        kintsugi=kintsugi, fiducial=fiducial, drift_correction=drift_correction,
        sem_dwell_us=sem_dwell_us, eds_live_time_s=eds_live_time_s,
        sims_frame_time_s=sims_frame_time_s, mill_current_na=mill_current_na,
        sims_current_na=sims_current_na, mill_box_um=mill_box_um, rock_deg=rock_deg,
        pt_thickness_um=pt_thickness_um, polish_um=polish_um,
    )  # fmt: skip
    chamber = Chamber(pfib.stage, pfib.insertables,
                      chamber_part("geometry", geometry, ChamberGeometry),
                      chamber_part("limits", limits, ChamberLimits))  # fmt: skip
    _check_reachable(chamber, need_sims=settings.sims_every > 0,
                     need_eds=settings.eds_every > 0)  # fmt: skip
    if resume is not None and (not isinstance(resume, str) or not resume.strip()):
        raise PlanArgumentError(f"resume must be the uid of the series' first run, got {resume!r}")
    milled_now = int(pfib.mill.slices_milled.get())
    sem_shape = (int(pfib.sem.cam.array_size.array_size_y.get()),
                 int(pfib.sem.cam.array_size.array_size_x.get()))  # fmt: skip
    sem_frame_s = settings.sem_dwell_us * 1e-6 * sem_shape[0] * sem_shape[1]
    cut_s = _cut_time_s(pfib, settings)
    remaining = settings.n_slices if resume is None else None

    def estimate(first: int, count: int) -> float:
        return estimate_slice_and_view_s(
            count, cut_s=cut_s, sem_frame_s=sem_frame_s,
            eds_live_time_s=settings.eds_live_time_s,
            sims_frame_time_s=settings.sims_frame_time_s, eds_every=settings.eds_every,
            sims_every=settings.sims_every, first_slice=first,
        )  # fmt: skip

    if remaining is not None:
        require_duration_within("slice_and_view", estimate(milled_now + 1, remaining),
                                max_duration_s)  # fmt: skip
    pixel_um = float(pfib.electron_column.pixel_nm.get()) * 1e-3

    def run_plan():
        series = None
        if resume is not None:
            documents = yield Msg(SERIES_COMMAND, None, resume.strip())
            series = series_progress(documents or [])
            _check_resume(series, settings)
        milled = int((yield from bps.rd(pfib.mill.slices_milled)))
        if series is None:
            series_first = milled + 1
            last = milled + settings.n_slices
        else:
            series_first = series.block.series_first_slice
            last = int(series_first) + settings.n_slices - 1
        reimage = _missing_maps(series, settings, milled, series_first, last)
        to_mill = list(range(max(milled + 1, int(series_first)), last + 1))
        logger.info(
            "slice_and_view: slices %s to mill (estimated %s at the instrument)%s",
            f"{to_mill[0]}-{to_mill[-1]}" if to_mill else "none",
            format_duration(estimate(to_mill[0], len(to_mill))) if to_mill else "0 s",
            f"; the face of slice {milled} is mapped first ({', '.join(reimage)})"
            if reimage
            else "",
        )
        if series is not None:  # checked here: the slices left are known only now
            require_duration_within(
                "slice_and_view",
                estimate(to_mill[0], len(to_mill)) if to_mill else 0.0,
                max_duration_s,
            )
        depth = float((yield from bps.rd(pfib.mill.face_depth_um)))
        block = SliceViewBlock(
            n_slices=settings.n_slices, first_slice=to_mill[0] if to_mill else last + 1,
            slice_thickness_um=settings.thickness_um, start_depth_um=depth,
            sem_pixel_um=pixel_um,
            eds_pixel_um=float((yield from bps.rd(pfib.eds.pixel_nm))) * 1e-3,
            sims_pixel_um=float((yield from bps.rd(pfib.sims.pixel_nm))) * 1e-3,
            sem_channels=pfib.sem.channels(), eds_lines=pfib.eds.channels(),
            sims_masses=pfib.sims.channels(), eds_every=settings.eds_every,
            sims_every=settings.sims_every, fiducial_px=settings.fiducial,
            kintsugi=settings.kintsugi, resume_of=series.first_uid if series else None,
            sample_id=sample_id or None, series_first_slice=int(series_first),
        )  # fmt: skip
        run_md = {
            "plan_name": "slice_and_view",
            "detectors": [camera.name for camera in pfib.cameras],
            "num_points": len(to_mill) + int("sem" in reimage),
            "progress_stream": "sem",
            "plan_args": {"n_slices": settings.n_slices,
                          "slice_thickness_um": settings.thickness_um,
                          "eds_every": settings.eds_every, "sims_every": settings.sims_every,
                          "kintsugi": settings.kintsugi, "resume": resume},
            "estimated_duration_s": round(estimate(block.first_slice, len(to_mill)), 1),
            **sample_md(sample_id),
            "slice_and_view": block.to_md(),
        }  # fmt: skip
        if series is not None:
            run_md["resume_of"] = series.first_uid
        run_md.update(md or {})
        drift = _DriftTracker(pfib, settings, pixel_um, series.reference if series else None)
        safe = fibsem_safe_state(pfib.ion_column, mill=pfib.mill,
                                 insertables=list(pfib.insertables.values()),
                                 cameras=pfib.cameras, gis=pfib.gis)  # fmt: skip
        slice_number = Signal(name="slice_number", value=0)
        tags = _readers(pfib, slice_number)

        @bpp.stage_decorator(list(pfib.cameras))
        @bpp.run_decorator(md=run_md)
        @safe_state_decorator(safe)
        def body():
            # A client killed after a cut left the ion beam on: blank it before anything.
            yield from set_ion_beam(pfib.ion_column, "Blanked")
            yield from _configure(pfib, settings)
            if reimage:
                yield from bps.mv(slice_number, milled)
                yield from _image_slice(pfib, chamber, settings, milled, tags, drift,
                                        streams=reimage)  # fmt: skip
                if "sims" in reimage:
                    yield from _sims_slice(pfib, chamber, settings, milled, tags)
            for number in to_mill:
                yield from bps.checkpoint()
                yield from bps.mv(slice_number, number)
                if settings.kintsugi and (yield from _needs_kintsugi(pfib, settings.thickness_um)):
                    yield from _kintsugi(pfib, chamber, settings.pt_thickness_um,
                                         settings.polish_um)  # fmt: skip
                yield from go_to_pose(chamber, "mill")
                yield from bps.mv(pfib.ion_column.current, settings.mill_current_na)
                yield from set_ion_beam(pfib.ion_column, "On")
                yield from mill_slice(pfib.mill, number)
                yield from set_ion_beam(pfib.ion_column, "Blanked")
                yield from bps.trigger_and_read([pfib.mill, *tags], name="mill")
                yield from _image_slice(pfib, chamber, settings, number, tags, drift)
                yield from _sims_slice(pfib, chamber, settings, number, tags)
            yield from go_to_pose(chamber, "eucentric")
            # Tilted back, the SEM measures the milled depth on the trench wall.
            yield from bps.trigger_and_read([pfib.mill.face_depth_um, pfib.mill.measured_depth_um,
                                             pfib.mill.slices_milled, pfib.stage.pose],
                                            name="depth")  # fmt: skip

        try:
            return (yield from body())
        finally:
            drift.close()

    return (yield from run_plan())


def _missing_maps(series, settings, milled: int, first: int, last: int) -> tuple[str, ...]:
    """The maps of the last milled face that are due and that no run of the series took.

    A client killed after a cut, or after the SEM frame but before the maps, leaves the
    face unmapped; the next cut destroys it, so a resume takes them first.
    """
    if series is None or not first <= milled <= last:
        return ()
    due = ["sem"]
    if _due(milled, settings.eds_every):
        due.append("eds")
    if _due(milled, settings.sims_every):
        due.append("sims")
    return tuple(s for s in due if milled not in series.imaged.get(s, set()))


def _check_resume(series: SeriesProgress, settings: _Settings) -> None:
    if series.block.resume_of:
        raise PlanArgumentError(
            f"resume: run {series.first_uid} itself resumes {series.block.resume_of}; pass "
            f"the series' first run: resume={series.block.resume_of!r}"
        )
    block = series.block
    if block.n_slices != settings.n_slices or not math.isclose(
        float(block.slice_thickness_um or 0.0), settings.thickness_um, rel_tol=1e-9
    ):
        raise PlanArgumentError(
            f"resume: the series {series.first_uid} is {block.n_slices} slices of "
            f"{block.slice_thickness_um} um; asked for {settings.n_slices} of "
            f"{settings.thickness_um} um"
        )


def kintsugi_face(
    pfib,
    pt_thickness_um: float = 2.0,
    polish_um: float = 1.5,
    *,
    sample_id: str = "",
    geometry: ChamberGeometry | Mapping[str, object] | None = None,
    limits: ChamberLimits | Mapping[str, object] | None = None,
    md: dict | None = None,
):
    """Kintsugi (seed 003): deposit Pt on the face, polish it back, verify the face.

    Pt fills the open pores behind the face; the polish removes the cap so that Pt
    stays only in the pores, which then read bright in the SEM instead of showing
    their back walls. The face is verified flat: no Pt left on it, pores filled
    beyond it. Stream ``kintsugi``: the depth filled, the cap, the face depth.

    Raises
    ------
    PlanArgumentError
        Before anything moves, for a bad thickness or an unreachable pose.
    KintsugiError
        If the face is not flat and filled afterwards.
    """
    _check_pfib(pfib)
    sample_md(sample_id)
    pt = require_number("pt_thickness_um", pt_thickness_um, minimum=0, exclusive_minimum=True,
                        maximum=10.0)  # fmt: skip
    polish = require_number("polish_um", polish_um, minimum=0, exclusive_minimum=True,
                            maximum=10.0)  # fmt: skip
    chamber = Chamber(pfib.stage, pfib.insertables,
                      chamber_part("geometry", geometry, ChamberGeometry),
                      chamber_part("limits", limits, ChamberLimits))  # fmt: skip
    _check_reachable(chamber, need_sims=True, need_eds=False)
    run_md = {"plan_name": "kintsugi_face", **sample_md(sample_id), "num_points": 1,
              "plan_args": {"pt_thickness_um": pt, "polish_um": polish}}  # fmt: skip
    run_md.update(md or {})
    safe = fibsem_safe_state(pfib.ion_column, mill=pfib.mill,
                             insertables=list(pfib.insertables.values()), gis=pfib.gis)  # fmt: skip

    @bpp.run_decorator(md=run_md)
    @safe_state_decorator(safe)
    def body():
        yield from _kintsugi(pfib, chamber, pt, polish)

    return (yield from body())
