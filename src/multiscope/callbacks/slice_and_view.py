"""Live assembly of a PFIB-SEM slice-and-view series: aligned BSE, EDS and SIMS volumes.

:class:`SliceAndViewAssembler` consumes the runs of ``plans.slice_and_view`` (start
document with the ``slice_and_view`` block, :class:`~multiscope.contracts.SliceViewBlock`;
streams ``sem``, ``eds``, ``sims`` with one event per slice and the frames in HDF5)
and does each slice's work as soon as its frames are in, so that a 12 h series ends
with stacking only:

=====================  ==================================================================
when                   what (pure functions of :mod:`multiscope.analysis.serial`)
=====================  ==================================================================
a slice's SEM frames   CBS and TLD kept; the drift of the fiducial window
                       (``fiducial_px``) of the CBS against the series' first slice,
                       removed from both (:func:`~multiscope.analysis.serial.slice_drift`,
                       :func:`~multiscope.analysis.stack.apply_shifts`); the residual
                       left; the segmentation when a classifier was given
its EDS maps           moved by the same drift, converted to EDS pixels (the beam
                       shift moves the SEM and EDS fields together)
its EDS + SIMS maps    SIMS registered to EDS (the Li-host lines against 6Li+, see
                       :mod:`~multiscope.analysis.serial`), every mass resampled onto the
                       EDS grid, the Li x Zr covariance map and its middle-row profile
                       (seed 004, fig. 6); then moved by the drift with the EDS maps
the stop               the volumes (:func:`~multiscope.analysis.stack.assemble_volume`:
                       BSE CBS and TLD with voxel ``(slice thickness, SEM pixel, SEM
                       pixel)``, EDS per line and SIMS per mass on the EDS grid, the
                       covariance maps, the labels), the figures and a derived run
                       (:func:`~multiscope.callbacks.derived.publish_derived_run`)
=====================  ==================================================================

A slice is identified by its events' ``slice_number`` (else ``first_slice`` plus the
event's sequence number minus one). A frame's channel is its file attribute
``channel`` when the file has it, else its order in the event.

Registration fallback: a slice mapped by SIMS without EDS, or whose registration
finds no overlap, takes the last registration of the series (the SIMS field moves
with the sample between slices; the sims pose is reproducible); a series without
any registration leaves the SIMS maps unregistered (not in the volumes) and says so
in the derived run (``registration_fallbacks``).

Resumed series (``resume_of`` set): the assembler keeps one series across runs. A
run without ``resume_of`` begins a new series; a run whose ``resume_of`` is the
current series' first uid continues it (same reference slice, same volumes), and
its stop publishes the volumes of the whole series. To continue a series the
assembler did not see (another process, a restart), replay the first run's
documents with :meth:`SliceAndViewAssembler.seed_from` (from the catalog or the
journal): they are assembled as live, but nothing is written or published. A resume
whose first run was never seen is assembled alone, against its own first slice,
and its derived run says ``series_complete: False``. So a session subscribes one
long-lived assembler (:func:`slice_and_view_pipeline`), not one per run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from multiscope.analysis.serial import SliceCorrelation, correlate_slice, shift_map, slice_drift
from multiscope.analysis.stack import apply_shifts, assemble_volume
from multiscope.callbacks.derived import VOLUME_DATASET, provenance, publish_derived_run
from multiscope.callbacks.runs import FrameRecord, RunFrames
from multiscope.contracts import SliceViewBlock

__all__ = [
    "DERIVED_PLAN",
    "Series",
    "SliceAndViewAssembler",
    "SliceState",
    "slice_and_view_pipeline",
]

logger = logging.getLogger(__name__)

DERIVED_PLAN = "slice_and_view_assembly"
NO_EDS = "no EDS map of this slice"
#: Data key of each stream's frames (the run contract).
STREAM_KEYS = {"sem": "sem_image", "eds": "eds_image", "sims": "sims_image"}
#: Event values a frame waits for (record name -> data key).
#: The contract's keys (``SliceViewBlock``), and the earlier short spellings, read alike.
FACE_DEPTH_KEYS = ("mill_face_depth_um", "face_depth_um")
BEAM_SHIFT_KEYS = (("electron_column_beam_shift_x_um", "electron_column_beam_shift_y_um"),
                   ("beam_shift_x_um", "beam_shift_y_um"))  # fmt: skip
EVENT_FIELDS = {key: key for key in ("slice_number", *FACE_DEPTH_KEYS, *sum(BEAM_SHIFT_KEYS, ()))}
#: Pixel sizes (um) when a block lacks them: the instrument's defaults (pv_spec).
DEFAULT_PIXEL_UM = {"sem": 0.05, "eds": 0.0814, "sims": 0.072}


@dataclass
class SliceState:
    """One slice's frames and what has been computed of them so far.

    Attributes
    ----------
    number : int
        Slice number (1-based, over the series).
    run_uid : str
        The run that imaged it.
    face_depth_um : float or None
    beam_shift_um : (float, float) or None
        ``(x, y)`` beam shift of the face's SEM frame and EDS map.
    sem, eds, sims : dict of str to ndarray
        Raw frames by channel, line and mass.
    drift_px, residual_px : ndarray (2,) or None
        SEM drift against the series' first slice and what its removal left.
    aligned_sem : dict of str to ndarray
        CBS and TLD with the drift removed (NaN where the field moved off).
    correlation : SliceCorrelation or None
    registration_fallback : bool
        The registration was taken from an earlier slice.
    fallback_reason : str
        Why (:data:`NO_EDS`, or the registration's error); empty without a fallback.
    eds_aligned, sims_aligned : dict of str to ndarray
        Maps on the EDS grid with the drift removed.
    labels : ndarray or None
        Segmentation of the aligned CBS + TLD.
    seconds : float
        Time spent on this slice (frames handed over to processing done).
    imaged : dict of str to (str, int)
        Per stream, the event (run uid, sequence number) whose frames of this slice
        came (the raw SEM frames are dropped once aligned).
    """

    number: int
    run_uid: str
    face_depth_um: float | None = None
    beam_shift_um: tuple[float, float] | None = None
    sem: dict = field(default_factory=dict)
    eds: dict = field(default_factory=dict)
    sims: dict = field(default_factory=dict)
    drift_px: np.ndarray | None = None
    residual_px: np.ndarray | None = None
    aligned_sem: dict = field(default_factory=dict)
    correlation: SliceCorrelation | None = None
    registration_fallback: bool = False
    fallback_reason: str = ""
    eds_aligned: dict = field(default_factory=dict)
    sims_aligned: dict = field(default_factory=dict)
    labels: np.ndarray | None = None
    seconds: float = 0.0
    imaged: dict = field(default_factory=dict)


@dataclass
class Series:
    """A series of slices over one or more runs (the first run and its resumes).

    Attributes
    ----------
    uid : str
        Start uid of the series' first run.
    block : SliceViewBlock
        The block of the run that began the series (the geometry of every slice).
    runs : list of str
        Uids of the runs seen, in order.
    slices : dict of int to SliceState
    reference : ndarray or None
        CBS image of the series' first slice (the drift reference).
    reference_slice : int or None
    complete : bool
        False when a resume arrived whose first run was never seen.
    """

    uid: str
    block: SliceViewBlock
    runs: list = field(default_factory=list)
    slices: dict = field(default_factory=dict)
    reference: np.ndarray | None = None
    reference_slice: int | None = None
    complete: bool = True

    def last_registration(self, before: int) -> np.ndarray | None:
        """The registration of the latest slice before ``before`` that measured one."""
        done = [s for n, s in self.slices.items() if n < before and s.correlation is not None
                and not s.registration_fallback]  # fmt: skip
        return max(done, key=lambda s: s.number).correlation.shift_um if done else None


class SliceAndViewAssembler(RunFrames):
    """Assembles slice-and-view runs live (see the module docstring).

    Parameters
    ----------
    publish : callable, optional
        ``publish(name, doc)`` receives the derived run's documents (None: none sent).
    output_dir : path-like
        Where each run's volumes (HDF5) and figures (PNG) go, in a folder per run.
    classifier : multiscope.analysis.pixel_classifier.PixelClassifier, optional
        Trained on CBS + TLD (2 channels, in that order): each aligned slice is
        segmented with it.
    class_names : dict of int to str, optional
        Legend of the segmentation figure.
    figures : bool
        Write the PNG figures at each stop.
    reader_timeout : float
        Seconds to wait for frames the writer has not flushed.

    Attributes
    ----------
    series : Series or None
        The series being assembled (kept across the runs of a resumed series).
    uid : str or None
        The last derived run's uid.
    paths : dict of str to Path
        Files of the last stop (``volumes``, ``figure_*``).
    """

    plans = ("slice_and_view",)
    streams = ("sem", "eds", "sims")

    def __init__(self, publish=None, *, output_dir, classifier=None, class_names=None,
                 figures: bool = True, reader_timeout: float = 5.0) -> None:  # fmt: skip
        self.publish = publish
        self.output_dir = Path(output_dir)
        self.classifier = classifier
        self.class_names = dict(class_names or {})
        self.figures = figures
        self.series: Series | None = None
        self.block: SliceViewBlock | None = None
        self.uid: str | None = None
        self.paths: dict[str, Path] = {}
        self._seeding = False
        #: ``history(uid)``: the documents of the series begun by run ``uid`` (or None).
        self.history = None
        self._groups: dict[tuple[str, int], list[FrameRecord]] = {}
        self._frames_per_event: dict[str, int] = {}
        super().__init__(reader_timeout=reader_timeout)

    # -- the run ---------------------------------------------------------------------
    def start(self, doc):
        """A run; a resume of a series this assembler has not seen is seeded first.

        With :attr:`history` (``history(uid)``: the documents of the series begun by
        run ``uid``, e.g. :func:`multiscope.catalog.series_documents` on the session's
        journal; the session sets it) the earlier runs are replayed by
        :meth:`seed_from`, so a session started after a crash assembles the whole
        series.
        """
        resumes = (doc.get("slice_and_view") or {}).get("resume_of")
        known = self.series is not None and self.series.uid == resumes
        if resumes and not known and self.history is not None and not self._seeding:
            try:
                earlier = _other_runs(self.history(resumes), doc["uid"])
            except Exception as error:  # noqa: BLE001 - assembled alone, as without history
                logger.warning("series %s: earlier runs unreadable (%s)", resumes, error)
            else:
                self.seed_from(earlier)
        return super().start(doc)

    def accepts(self, start_doc: dict) -> bool:
        return start_doc.get("plan_name") in self.plans and "slice_and_view" in start_doc

    def run_started(self) -> None:
        block = SliceViewBlock.from_md(self.start_doc["slice_and_view"])
        uid = self.start_doc["uid"]
        self.block = block
        self.camera_key = STREAM_KEYS["sem"]
        self._groups.clear()
        self._frames_per_event = {
            "sem": len(block.sem_channels) or 2,
            "eds": len(block.eds_lines),
            "sims": len(block.sims_masses),
        }
        if block.resume_of is None:
            self.series = Series(uid=uid, block=block)
        elif self.series is None or self.series.uid != block.resume_of:
            logger.warning(
                "run %s resumes %s, which this assembler has not seen: assembled alone "
                "(replay the first run with seed_from)", uid, block.resume_of,
            )  # fmt: skip
            self.series = Series(uid=block.resume_of, block=block, complete=False)
        self.series.runs.append(uid)

    def seed_from(self, documents: Iterable[tuple[str, dict]]) -> None:
        """Assemble an earlier run of the series from its documents, publishing nothing.

        Parameters
        ----------
        documents : iterable of (name, doc)
            The series' first run (then any resume before the one to come), e.g.
            ``run.documents()`` of a catalog entry or the journal's lines.
        """
        self._seeding = True
        try:
            for name, doc in documents:
                self(name, doc)
        finally:
            self._seeding = False

    def camera_key_of(self, stream: str) -> str | None:
        return STREAM_KEYS.get(stream)

    def event_fields(self, stream: str) -> dict[str, str]:
        return dict(EVENT_FIELDS)

    def read_options(self, stream: str) -> dict:
        return {"attributes": ("channel", "face_depth_um")}

    def described(self, doc: dict) -> None:
        key = STREAM_KEYS.get(doc["name"])
        shape = doc.get("data_keys", {}).get(key, {}).get("shape") or ()
        if len(shape) == 3 and int(shape[0]) > 0:  # [frames per event, ny, nx]
            self._frames_per_event[doc["name"]] = int(shape[0])

    # -- slices ----------------------------------------------------------------------
    def _names(self, stream: str) -> tuple[str, ...]:
        block = self.block
        names = {"sem": block.sem_channels, "eds": block.eds_lines, "sims": block.sims_masses}
        names = tuple(names[stream])
        count = self._frames_per_event.get(stream, len(names))
        return names + tuple(f"{stream}{k}" for k in range(len(names), count))

    def frame_arrived(self, record: FrameRecord) -> None:
        key = (record.stream, record.seq_num)
        group = self._groups.setdefault(key, [])
        group.append(record)
        if len(group) < max(1, self._frames_per_event.get(record.stream, 1)):
            return
        del self._groups[key]
        t0 = time.perf_counter()
        state = self._slice_of(record)
        names = self._names(record.stream)
        frames = getattr(state, record.stream)
        event = (self.start_doc["uid"], record.seq_num)
        if state.imaged.get(record.stream, event) != event:  # imaged again by another
            _forget_results(state, record.stream)  # event (a resume re-imaging the face)
            frames, state.run_uid = getattr(state, record.stream), self.start_doc["uid"]
        for order, rec in enumerate(group):
            channel = rec.attributes.get("channel")
            index = int(channel) if channel is not None and np.isfinite(channel) else order
            name = names[index] if 0 <= index < len(names) else names[order]
            frames[name] = np.asarray(rec.frame, dtype=np.float32)
        state.imaged[record.stream] = event
        self._advance(state)
        state.seconds += time.perf_counter() - t0

    def _slice_of(self, record: FrameRecord) -> SliceState:
        values = record.values
        number = values.get("slice_number")
        if number is None:
            number = self.block.first_slice + record.seq_num - 1
        number = int(number)
        state = self.series.slices.get(number)
        if state is None:
            state = SliceState(number, self.start_doc["uid"])
            self.series.slices[number] = state
        depths = [values.get(k) for k in FACE_DEPTH_KEYS] + [record.attributes.get("face_depth_um")]
        depths = [float(d) for d in depths if d is not None and np.isfinite(d)]
        if depths:  # the event's, else the frame file's
            state.face_depth_um = depths[0]
        # The beam shift moves the SEM and EDS fields (the plan changes it after both);
        # the SIMS event is taken after the correction: its value is not this face's.
        for x_key, y_key in BEAM_SHIFT_KEYS if record.stream != "sims" else ():
            if values.get(x_key) is not None:
                state.beam_shift_um = (float(values[x_key]), float(values.get(y_key) or 0.0))
                break
        return state

    def _pixel(self, modality: str) -> float:
        value = getattr(self.series.block, f"{modality}_pixel_um")
        return float(value) if value else DEFAULT_PIXEL_UM[modality]

    def _fiducial(self):
        window = self.series.block.fiducial_px
        if window is None:
            return None
        r0, r1, c0, c1 = (int(v) for v in window)
        return (slice(r0, r1), slice(c0, c1))

    def _advance(self, state: SliceState) -> None:
        """Do every step of the slice whose inputs are in and which is not done yet."""
        if state.sem and state.drift_px is None:  # (the raw SEM frames go once aligned)
            self._align_sem(state)
        waited = state.fallback_reason == NO_EDS
        if state.eds and state.sims and (state.correlation is None or waited):
            # (a fallback taken for want of EDS is redone when the EDS maps come after)
            state.sims_aligned, state.registration_fallback, state.fallback_reason = {}, False, ""
            self._correlate(state)
        elif state.sims and not state.eds and state.correlation is None:
            self._correlate_without_eds(state)
        if state.drift_px is None:
            return
        eds_shift = state.drift_px * self._pixel("sem") / self._pixel("eds")
        if state.eds and not state.eds_aligned:
            state.eds_aligned = {n: _f32(shift_map(m, eds_shift)) for n, m in state.eds.items()}
        if state.correlation is not None and not state.sims_aligned:
            state.sims_aligned = {n: _f32(shift_map(m, eds_shift))
                                  for n, m in state.correlation.sims_on_eds.items()}  # fmt: skip

    def _align_sem(self, state: SliceState) -> None:
        series = self.series
        channels = list(state.sem)
        reference_image = state.sem[channels[0]]  # CBS: the sharp detector
        if series.reference is None:  # the first slice seen; kept even if imaged again
            series.reference, series.reference_slice = reference_image, state.number
            state.drift_px, state.residual_px = np.zeros(2), np.zeros(2)
        else:
            state.drift_px, state.residual_px = slice_drift(
                series.reference, reference_image, fiducial=self._fiducial()
            )
        stack = np.stack([state.sem[c] for c in channels])
        aligned = apply_shifts(stack, np.repeat(state.drift_px[None], len(channels), axis=0))
        state.aligned_sem = dict(zip(channels, _f32(aligned), strict=True))
        if self.classifier is not None:
            state.labels = self.classifier.predict(aligned[: self.classifier.n_channels])
        state.sem = {}  # memory: a 39-slice series keeps only what its volumes need

    def _correlate(self, state: SliceState) -> None:
        try:
            state.correlation = correlate_slice(state.eds, state.sims, self._pixel("eds"),
                                                self._pixel("sims"))  # fmt: skip
        except ValueError as error:
            logger.warning("slice %d: EDS-SIMS registration failed (%s)", state.number, error)
            self._correlate_without_eds(state, eds=state.eds, reason=str(error))

    def _correlate_without_eds(self, state: SliceState, eds=None, reason: str = "") -> None:
        """The fallback: the series' last registration (no EDS map, or none found)."""
        shift = self.series.last_registration(state.number)
        if shift is None:
            return
        grid = None
        if not eds:  # SIMS only: onto the grid of the series' EDS maps
            mapped = [s for s in self.series.slices.values() if s.eds]
            if not mapped:
                return
            grid = next(iter(mapped[-1].eds.values())).shape
        state.correlation = correlate_slice(eds or {}, state.sims, self._pixel("eds"),
                                            self._pixel("sims"), shift_um=shift,
                                            grid_shape=grid)  # fmt: skip
        state.registration_fallback = True
        state.fallback_reason = reason or NO_EDS

    # -- the stop --------------------------------------------------------------------
    def run_stopped(self, doc: dict) -> None:
        if self._groups:
            logger.warning("run %s stopped with %d incomplete frame groups",
                           self.start_doc["uid"], len(self._groups))  # fmt: skip
        if self._seeding:
            return
        volumes = self.volumes()
        if not volumes:
            logger.warning("run %s: no slice imaged, nothing to publish", self.start_doc["uid"])
            return
        folder = self.output_dir / f"slice_and_view_{self.start_doc['uid'][:8]}"
        folder.mkdir(parents=True, exist_ok=True)
        self.paths = {"volumes": folder / "volumes.h5"}
        table = self.published_table()
        write_volumes(self.paths["volumes"], volumes, table)
        if self.figures:
            self.paths.update(self._write_figures(folder, volumes))
        self.uid = self._publish(volumes, table, doc)

    def volumes(self) -> dict[str, tuple[np.ndarray, tuple[float, float, float], list[int]]]:
        """The series' volumes so far: name -> ``(volume (z, y, x), voxel_um, slice numbers)``.

        ``bse_<channel>`` (SEM grid), ``eds_<line>`` and ``sims_<mass>`` (EDS grid),
        ``covariance_li_zr`` and ``labels`` when computed. The voxel's z is the slice
        thickness times the spacing of the slices the modality mapped.
        """
        if self.series is None:
            return {}
        slices = [self.series.slices[n] for n in sorted(self.series.slices)]
        thickness = float(self.series.block.slice_thickness_um or 1.0)
        out = {}

        def add(name, pick, pixel_um):
            picked = [(s.number, pick(s)) for s in slices]
            picked = [(n, image) for n, image in picked if image is not None]
            if not picked:
                return
            numbers = [n for n, _ in picked]
            step = int(np.median(np.diff(numbers))) if len(numbers) > 1 else 1
            volume, voxel = assemble_volume([image for _, image in picked], pixel_um,
                                            thickness * max(step, 1))  # fmt: skip
            out[name] = (volume, voxel, numbers)

        for channel in self._channel_names(slices, "aligned_sem"):
            add(f"bse_{channel}", lambda s, c=channel: s.aligned_sem.get(c), self._pixel("sem"))
        for line in self._channel_names(slices, "eds_aligned"):
            add(f"eds_{line}", lambda s, c=line: s.eds_aligned.get(c), self._pixel("eds"))
        for mass in self._channel_names(slices, "sims_aligned"):
            add(f"sims_{mass}", lambda s, c=mass: s.sims_aligned.get(c), self._pixel("eds"))
        add("covariance_li_zr", self._aligned_covariance, self._pixel("eds"))
        add("labels", lambda s: s.labels, self._pixel("sem"))
        return out

    @staticmethod
    def _channel_names(slices, attribute) -> list[str]:
        names: list[str] = []
        for s in slices:
            names += [n for n in getattr(s, attribute) if n not in names]
        return names

    def _aligned_covariance(self, state: SliceState):
        c = state.correlation
        if c is None or c.covariance_map is None or state.drift_px is None:
            return None
        return shift_map(c.covariance_map, state.drift_px * self._pixel("sem") / self._pixel("eds"))

    def series_table(self) -> dict[str, np.ndarray]:
        """Per-slice results of the series: slice numbers, drift, residual, time; and per
        correlated slice the registration and the covariance."""
        slices = [self.series.slices[n] for n in sorted(self.series.slices)]
        aligned = [s for s in slices if s.drift_px is not None]
        correlated = [s for s in slices if s.correlation is not None]
        return {
            "slice_numbers": np.array([s.number for s in aligned], dtype=np.int64),
            "face_depth_um": np.array([np.nan if s.face_depth_um is None else s.face_depth_um
                                       for s in aligned]),  # fmt: skip
            "drift_px": np.array([s.drift_px for s in aligned]).reshape(-1, 2),
            "residual_px": np.array([s.residual_px for s in aligned]).reshape(-1, 2),
            "slice_seconds": np.array([s.seconds for s in slices]),
            "registered_slices": np.array([s.number for s in correlated], dtype=np.int64),
            "registration_shift_um": np.array([s.correlation.shift_um for s in correlated]
                                              ).reshape(-1, 2),  # fmt: skip
            "registration_fallbacks": np.array([s.number for s in correlated
                                                if s.registration_fallback], dtype=np.int64),
            "covariance_li_zr": np.array([s.correlation.covariance for s in correlated]),
        }  # fmt: skip

    def _write_figures(self, folder: Path, volumes) -> dict[str, Path]:
        from multiscope.callbacks.slice_and_view_figures import (
            covariance_figure,
            orthoslice_figure,
            segmentation_figure,
        )

        paths = {}
        sample = self.series.block.sample_id or ""
        for name, (volume, voxel, _) in volumes.items():
            if name.startswith("bse_"):
                paths[f"figure_{name}"] = folder / f"{name}_orthoslices.png"
                orthoslice_figure(paths[f"figure_{name}"], volume, voxel,
                                  title=f"{sample} {name}: {len(volume)} slices")  # fmt: skip
        mapped = [
            s
            for s in self.series.slices.values()
            if s.correlation is not None and s.correlation.covariance_map is not None
        ]
        if mapped:
            last = max(mapped, key=lambda s: s.number)
            paths["figure_covariance"] = folder / "covariance_li_zr.png"
            covariance_figure(paths["figure_covariance"], last.correlation.covariance_map,
                              last.correlation.profile, self._pixel("eds"),
                              title=f"{sample} {last.correlation.li_mass} x "
                              f"{last.correlation.zr_line}, slice {last.number}")  # fmt: skip
        labelled = [s for s in self.series.slices.values() if s.labels is not None]
        if labelled:
            last = max(labelled, key=lambda s: s.number)
            paths["figure_segmentation"] = folder / "segmentation.png"
            segmentation_figure(paths["figure_segmentation"], last.labels, self._pixel("sem"),
                                names=self.class_names,
                                title=f"{sample} segmentation, slice {last.number}")  # fmt: skip
        return paths

    def published_table(self) -> dict[str, np.ndarray]:
        """:meth:`series_table` as stored: no NaN (the covariance of the slices with a
        Zr map, with their numbers in ``covariance_slices``), no empty entry."""
        table = self.series_table()
        measured = np.isfinite(table["covariance_li_zr"])
        table["covariance_slices"] = table["registered_slices"][measured]
        table["covariance_li_zr"] = table["covariance_li_zr"][measured]
        return {k: v for k, v in table.items()
                if v.size and (v.dtype.kind != "f" or np.isfinite(v).all())}  # fmt: skip

    def _publish(self, volumes, table, stop_doc: dict) -> str:
        from multiscope.analysis import correlative, serial, stack

        series, block = self.series, self.series.block
        cbs_name = _main_volume(volumes)
        cbs, voxel, _ = volumes[cbs_name]
        regs = table.get("registration_shift_um", np.zeros((0, 2)))
        covs = table.get("covariance_li_zr", np.zeros(0))
        scalars = {
            "n_slices": int(len(table["slice_numbers"])),
            "drift_max_px": float(np.abs(table["drift_px"]).max(initial=0.0)),
            "residual_max_px": float(np.abs(table["residual_px"]).max(initial=0.0)),
            "slice_seconds_max": float(table["slice_seconds"].max(initial=0.0)),
        }
        # Only what was measured: no NaN in the documents (strict JSON readers refuse it).
        if len(regs):
            scalars["registration_dy_um"], scalars["registration_dx_um"] = map(float, regs[-1])
        if np.isfinite(covs).any():
            scalars["covariance_li_zr"] = float(np.nanmean(covs))
        metadata = {
            "plan_name": DERIVED_PLAN,
            "derived_from": self.start_doc["uid"],
            "series_uid": series.uid,
            "series_runs": list(series.runs),
            "series_complete": series.complete,
            "sample_id": block.sample_id,
            "parameters": {
                "fiducial_px": block.fiducial_px, "reference_slice": series.reference_slice,
                "slice_thickness_um": block.slice_thickness_um,
                "pixel_um": {m: self._pixel(m) for m in ("sem", "eds", "sims")},
                "classifier": type(self.classifier).__name__ if self.classifier else None,
            },
            "volumes": {name: {"voxel_um": list(v[1]), "slice_numbers": v[2]}
                        for name, v in volumes.items()},
            "volume_key_holds": cbs_name,
            "files": {k: str(v) for k, v in self.paths.items() if not k.startswith("figure_")},
            "figures": [str(v) for k, v in self.paths.items() if k.startswith("figure_")],
            "raw_exit_status": stop_doc.get("exit_status"),
            **provenance((serial.slice_drift, serial.correlate_slice, serial.li_host_reference,
                          stack.measure_drift, stack.apply_shifts, stack.assemble_volume,
                          correlative.register, correlative.resample,
                          correlative.covariance_map, correlative.line_profile)),
        }  # fmt: skip
        # Per slice in the start document (tens of numbers) and the HDF5 file, not as
        # event arrays: the catalog's tables take scalars only.
        metadata["series_table"] = {k: v.tolist() for k, v in table.items()}
        return publish_derived_run(
            self.publish, metadata, scalars=scalars,
            volume_path=self.paths["volumes"], volume_shape=cbs.shape,
        )  # fmt: skip


def write_volumes(path, volumes, table=None) -> None:
    """One HDF5 file: the first BSE volume at ``VOLUME_DATASET`` (``(1, z, y, x)``, what
    the derived run references), every volume under ``/entry/volumes/<name>`` with
    its ``voxel_um`` and ``slice_numbers`` attributes, and the per-slice ``table``
    (:meth:`SliceAndViewAssembler.published_table`) under ``/entry/series/<key>``."""
    with h5py.File(path, "w") as f:
        for key, values in (table or {}).items():
            f.create_dataset(f"/entry/series/{key}", data=values)
        first = _main_volume(volumes)
        f.create_dataset(VOLUME_DATASET, data=volumes[first][0][None].astype(np.float32))
        group = f.create_group("/entry/volumes")
        for name, (volume, voxel, numbers) in volumes.items():
            ds = group.create_dataset(name.replace(" ", "_"), data=volume,
                                      compression="gzip", compression_opts=1)  # fmt: skip
            ds.attrs["voxel_um"] = np.asarray(voxel)
            ds.attrs["slice_numbers"] = np.asarray(numbers)
            ds.attrs["name"] = name


def slice_and_view_pipeline(output_dir, publish, *, classifier=None) -> SliceAndViewAssembler:
    """Factory for an instrument's spec: one assembler for the session, ``<output_dir>/
    slice_and_view/`` for its files.

    Subscribe the one instance (behind a ``BackgroundCallback``), not a per-run factory
    of a ``RunRouter``: it keeps the series across the runs of a resume.
    """
    return SliceAndViewAssembler(
        publish, output_dir=Path(output_dir) / "slice_and_view", classifier=classifier
    )


def _other_runs(documents, uid: str) -> list[tuple[str, dict]]:
    """``documents`` (runs one after another) without those of run ``uid``."""
    kept, skipping = [], False
    for name, doc in documents:
        if name == "start":
            skipping = doc.get("uid") == uid
        if not skipping:
            kept.append((name, doc))
    return kept


def _forget_results(state: SliceState, stream: str) -> None:
    """Drop what was computed from ``stream``'s earlier frames of the slice."""
    state.sims_aligned = {}
    if stream in ("eds", "sims"):
        state.correlation, state.registration_fallback, state.fallback_reason = None, False, ""
    if stream == "eds":
        state.eds, state.eds_aligned = {}, {}
    if stream == "sem":
        state.sem, state.aligned_sem, state.eds_aligned = {}, {}, {}
        state.drift_px = state.residual_px = state.labels = None
    if stream == "sims":
        state.sims = {}


def _f32(images):
    """float32 copies: volumes are stored so, and a series' slices stay in memory."""
    if isinstance(images, dict):
        return {k: np.asarray(v, dtype=np.float32) for k, v in images.items()}
    return np.asarray(images, dtype=np.float32)


def _main_volume(volumes) -> str:
    """The volume a derived run references: the first BSE one (CBS), else the first."""
    return next((name for name in volumes if name.startswith("bse_")), next(iter(volumes)))
