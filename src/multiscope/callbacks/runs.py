"""One run's documents as frame records: the base of every live analysis callback.

A run's camera frames reach a callback in pieces: a ``descriptor`` names the
stream, a ``stream_resource`` the HDF5 file, a ``stream_datum`` a range of its
rows (:mod:`multiscope.frame_files`), and the ``event`` of each row carries what
the frame was taken at (the rotation angle, the energy index) and arrives
after the datum. :class:`RunFrames` joins them once, for every consumer, into
:class:`FrameRecord` s (stream, sequence number, frame, angle, energy index) and
hands each to :meth:`RunFrames.frame_arrived` in the order of acquisition, so
a subclass holds analysis only:

=========================  ===============================================================
hook                       called
=========================  ===============================================================
``accepts(start)``         at ``start``: does this run concern the callback (plan names)?
``run_started()``          the run is accepted (``self.start_doc`` set); set
                           ``self.camera_key`` here to name the camera's data key
``event_fields(stream)``   which event data keys a frame of ``stream`` waits for
                           (``{"angle_deg": ..., "energy_index": ...}``; only those
                           its descriptor has: a fly scan's frames come without events)
``read_options(stream)``   rows and per-frame file attributes to read
``camera_key_of(stream)``  the data key of ``stream``'s frames (default: ``camera_key``;
                           a run with one detector per stream names each)
``described(doc)``         after a descriptor (``self.frame_shape`` known once the
                           camera's stream is described)
``datum_referenced(...)``  each camera ``stream_datum`` (before it is read)
``frame_arrived(record)``  each frame with everything it waits for
``frames_done()``          after each datum or event page: a moment to process
``run_stopped(doc)``       at ``stop``; the files are closed afterwards
=========================  ===============================================================

With ``read_live=False`` nothing is read while the run goes on: the datums and
event values are kept, and :meth:`RunFrames.read_records` reads a stream's
frames when asked (the full reconstruction reads at the stop, from closed files).

A frame's angle is its file attribute (``angle_attribute``, e.g. ``theta``, the
angle at mid-exposure of a fly scan) when the file has it, else its event's.
Streams other than ``streams`` and data keys other than the camera's are ignored.
The documents come through :class:`~multiscope.callbacks.replay.ReplayFilter` in a
session, so each event and datum is seen once (decision 0011).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from event_model import DocumentRouter

from multiscope.frame_files import FrameReader, stream_data_key

__all__ = ["FrameRecord", "RunFrames"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameRecord:
    """One camera frame with what it was taken at.

    Attributes
    ----------
    stream : str
        ``dark``, ``flat``, ``primary``...
    seq_num : int
        Sequence number of its event in the stream (frames of one trigger share it).
    frame : ndarray
        ``(ny, nx)``, or the rows asked for in :meth:`RunFrames.read_options`.
    angle_deg : float or None
        Rotation angle, from the file attribute or the event.
    energy_index : int or None
        Index into the run's energy grid, from the event.
    datum : int
        Which ``stream_datum`` of its stream it came from (0, 1, ...): consecutive
        frames of one acquisition block, e.g. one flat set.
    angle_source : str or None
        ``"hdf5:<attribute>"`` or ``"event:<data key>"``.
    values : dict
        Every event value the frame waited for (:meth:`RunFrames.event_fields`),
        by its record name.
    attributes : dict
        The frame's per-file attributes read (:meth:`RunFrames.read_options`), as floats.
    """

    stream: str
    seq_num: int
    frame: np.ndarray
    angle_deg: float | None = None
    energy_index: int | None = None
    datum: int = 0
    angle_source: str | None = None
    values: dict = field(default_factory=dict)
    attributes: dict = field(default_factory=dict)


class RunFrames(DocumentRouter):
    """Documents of one run -> :class:`FrameRecord` s, in order (see the module docstring).

    Parameters
    ----------
    reader_timeout : float
        Seconds to wait for frames the writer has not flushed yet.
    read_live : bool
        Read each datum's frames as it arrives (else: :meth:`read_records` later).

    Attributes
    ----------
    active : bool
        A run this callback accepted is in progress.
    start_doc : dict or None
    camera_key : str or None
        Data key of the camera's frames: set by :meth:`run_started`, else the first
        file-referenced key with 3 dimensions ``[frames, ny, nx]``.
    frame_shape : tuple of int or None
        ``(ny, nx)`` of the camera's frames.
    datums : dict of str to list of dict
        The camera's ``stream_datum`` documents per stream, in order.
    frames : FrameReader
    """

    #: Plans whose runs the callback analyses (``accepts``).
    plans: tuple[str, ...] = ()
    #: Streams whose camera frames become records.
    streams: tuple[str, ...] = ("dark", "flat", "primary")
    #: Per-frame file attribute holding the rotation angle, read when present.
    angle_attribute: str | None = None

    def __init__(self, *, reader_timeout: float = 2.0, read_live: bool = True) -> None:
        super().__init__()
        self.read_live = read_live
        self.frames = FrameReader(timeout=reader_timeout)
        self._reset()

    def _reset(self) -> None:
        self.active = False
        self.start_doc: dict | None = None
        self.camera_key: str | None = None
        self.frame_shape: tuple[int, int] | None = None
        self.datums: dict[str, list[dict]] = {s: [] for s in self.streams}
        self._stream_of_descriptor: dict[str, str] = {}
        # Per stream, the event fields its frames wait for that its descriptor has.
        self._fields_of_stream: dict[str, dict[str, str]] = {}
        # Frames waiting for their event, and event values waiting for their frames.
        self._waiting_frames: dict[tuple[str, int], list[tuple]] = {}
        self._event_values: dict[tuple[str, int], dict] = {}

    # -- hooks -----------------------------------------------------------------------
    def accepts(self, start_doc: dict) -> bool:
        """Whether the run concerns this callback (default: its plan is in :attr:`plans`)."""
        return start_doc.get("plan_name") in self.plans

    def run_started(self) -> None:
        """An accepted run started (``self.start_doc`` is set)."""

    def event_fields(self, stream: str) -> dict[str, str]:
        """Record attribute -> event data key that a frame of ``stream`` waits for."""
        return {}

    def read_options(self, stream: str) -> dict:
        """``rows`` and ``attributes`` for :meth:`FrameReader.read` of ``stream``'s frames."""
        return {}

    def camera_key_of(self, stream: str) -> str | None:
        """Data key whose frames become records in ``stream`` (default :attr:`camera_key`)."""
        return self.camera_key

    def described(self, doc: dict) -> None:
        """A descriptor of the run arrived."""

    def datum_referenced(self, stream: str, datum: dict) -> None:
        """A camera ``stream_datum`` arrived (before it is read)."""

    def frame_arrived(self, record: FrameRecord) -> None:
        """A frame arrived with everything it waits for."""

    def frames_done(self) -> None:
        """A datum or an event page has been handled: process what is complete."""

    def run_stopped(self, doc: dict) -> None:
        """The run's stop document arrived."""

    # -- documents -------------------------------------------------------------------
    def start(self, doc):
        self.frames.close()
        self._reset()
        self.active = self.accepts(doc)
        if self.active:
            self.start_doc = doc
            self.run_started()

    def descriptor(self, doc):
        if not self.active:
            return
        self.frames.add_descriptor(doc)
        self._stream_of_descriptor[doc["uid"]] = doc["name"]
        if doc["name"] in self.streams:
            fields = self.event_fields(doc["name"]).items()
            self._fields_of_stream[doc["name"]] = {
                name: key for name, key in fields if key in doc.get("data_keys", {})
            }
        key = self.camera_key or stream_data_key(doc, ndim=3)
        if key is not None and key in doc.get("data_keys", {}):
            self.camera_key = key
            shape = doc["data_keys"][key].get("shape") or ()
            if len(shape) >= 2:
                self.frame_shape = (int(shape[-2]), int(shape[-1]))
        self.described(doc)

    def stream_resource(self, doc):
        if self.active:
            self.frames.add_resource(doc)

    def stream_datum(self, doc):
        if not self.active:
            return
        stream = self._stream_of_descriptor.get(doc.get("descriptor", ""))
        if stream not in self.streams:
            return
        if self.frames.resource_of(doc).data_key != self.camera_key_of(stream):
            return
        number = len(self.datums[stream])
        self.datums[stream].append(doc)
        self.datum_referenced(stream, doc)
        if self.read_live:
            for record in self._records_of(stream, doc, number, pop=True):
                self.frame_arrived(record)
            self.frames_done()

    def event_page(self, doc):
        if not self.active:
            return
        stream = self._stream_of_descriptor.get(doc["descriptor"])
        fields = self._fields_of_stream.get(stream, {})
        data = doc["data"]
        present = {name: key for name, key in fields.items() if key in data}
        if not present:
            return
        for j, seq in enumerate(doc["seq_num"]):
            values = {name: data[key][j] for name, key in present.items()}
            pending = self._waiting_frames.pop((stream, int(seq)), None)
            if pending is None:
                self._event_values[(stream, int(seq))] = values
                continue
            for frames, attributes, number in pending:
                for record in self._make_records(stream, int(seq), frames, attributes, values,
                                                 number):  # fmt: skip
                    self.frame_arrived(record)
        self.frames_done()

    def stop(self, doc):
        if not self.active:
            return
        try:
            self.run_stopped(doc)
        finally:
            self.frames.close()
            self.active = False

    # -- frames ----------------------------------------------------------------------
    @property
    def frames_waiting(self) -> int:
        """Frames read whose event has not come yet."""
        return sum(
            len(frames) for pending in self._waiting_frames.values() for frames, *_ in pending
        )

    def read_records(self, stream: str) -> list[FrameRecord]:
        """Every frame of ``stream`` with its event values (``read_live=False`` callbacks).

        Raises
        ------
        ValueError
            A frame whose event never came with a value it waits for.
        """
        records = []
        for number, datum in enumerate(self.datums.get(stream, [])):
            records.extend(self._records_of(stream, datum, number, pop=False))
        if self._waiting_frames:
            (stream_, seq), *_ = self._waiting_frames
            self._waiting_frames.clear()
            fields = list(self._fields_of_stream.get(stream_, {}).values())
            raise ValueError(f"no {', '.join(fields)} for {stream_} event {seq}")
        return records

    def _records_of(self, stream, datum, number, *, pop: bool):
        """Records of one datum's frames whose event values are in (the rest wait)."""
        block = self.frames.read(datum, **self.read_options(stream))
        s0, s1 = block.seq_nums
        num_events = max(1, s1 - s0)
        per_event = max(1, len(block.data) // num_events)
        waits = bool(self._fields_of_stream.get(stream))
        records = []
        for k in range(num_events):
            part = slice(k * per_event, (k + 1) * per_event)
            frames = block.data[part]
            attributes = {name: values[part] for name, values in block.attributes.items()}
            key = (stream, s0 + k)
            values = {}
            if waits:
                values = self._event_values.pop(key, None) if pop else self._event_values.get(key)
                if values is None:
                    self._waiting_frames.setdefault(key, []).append((frames, attributes, number))
                    continue
            records.extend(self._make_records(stream, s0 + k, frames, attributes, values, number))
        return records

    def _make_records(self, stream, seq, frames, attributes, values, number):
        angles = attributes.get(self.angle_attribute) if self.angle_attribute else None
        event_angle = values.get("angle_deg")
        index = values.get("energy_index")
        angle_key = self._fields_of_stream.get(stream, {}).get("angle_deg")
        for k, frame in enumerate(frames):
            per_frame = {name: float(v[k]) for name, v in attributes.items() if len(v) > k}
            if angles is not None:
                angle, source = float(angles[k]), f"hdf5:{self.angle_attribute}"
            elif event_angle is not None:
                angle, source = float(event_angle), f"event:{angle_key}"
            else:
                angle, source = None, None
            yield FrameRecord(
                stream=stream,
                seq_num=int(seq),
                frame=frame,
                angle_deg=angle,
                energy_index=None if index is None else int(index),
                datum=number,
                angle_source=source,
                values=dict(values),
                attributes=per_frame,
            )
