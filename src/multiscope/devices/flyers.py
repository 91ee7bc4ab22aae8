"""Free-running acquisition of a staged :class:`StreamingCamera` as a bluesky flyer.

:class:`FlyingCamera` wraps a camera that is already staged (its HDF5 capture
file open in the IOC) and lets it acquire ``num_frames`` frames, one every
``frame_period_s``, without a trigger per frame: the IOC's clock paces the
frames, and each frame's per-frame attributes (e.g. the rotation angle at
mid-exposure) are recorded in the same file. It follows bluesky's ``Flyable``,
``Collectable`` and ``WritesStreamAssets`` protocols (sync ophyd statuses)::

    prepare  -> (camera staged) NumImages=N, AcquirePeriod=P, ImageMode=Multiple and,
                with a start trigger, TriggerMode=External and the trigger's Position
    kickoff  -> Acquire=1 (done once the IOC reports Acquire: acquiring, or armed for
                the start pulse; the file's frame count is the offset)
    complete -> done when the N frames are in the file (fails after N * P + margin,
                plus the start timeout when triggered, at once if the IOC
                disconnects, or if fewer frames were written)
    collect_asset_docs -> two StreamResources (first call), then StreamDatums for the
                frames written since the last call
    pause   -> (RunEngine pause or suspension) an acquisition not yet collected is
                stopped and abandoned; resume moves the camera to a new file, and the
                rewound plan runs the acquisition again from its kickoff. Once
                collected, it is not run again (``NoReplayAllowed``).

Documents of one fly acquisition (``<cam>`` is the camera's name)::

    descriptor  data_keys <cam>_image  external "STREAM:", shape [1, ny, nx], <u2
                          <cam>_theta  external "STREAM:", shape [],         <f8
    stream_resource  data_key <cam>_image, uri file://localhost<capture file>,
                     parameters {dataset: /entry/data/data, chunk_shape: [1, ny, nx],
                                 slice: "<first>:<first + N>" (only if first > 0)}
    stream_resource  data_key <cam>_theta, parameters {dataset:
                     /entry/instrument/NDAttributes/theta, slice: ...}
    stream_datum     per data key, indices {start, stop} = rows of the FILE

Frames already in the capture file (darks and flats taken earlier in the same
staging) come first, so ``indices`` start at the file's frame count at kickoff.
``parameters.slice`` carries the same window for tiled when it does not start at
row 0: its HDF5 consolidator reads a stream's rows from the start of the dataset
and ignores ``indices``; it applies the first resource's slice to all the
stream's files joined, so a file of the fly frames alone (the plans stage one per
acquisition) carries none.

Examples
--------
>>> flyer = FlyingCamera(camera, num_frames=180, frame_period_s=0.05)  # doctest: +SKIP
>>> def plan():                                                         # doctest: +SKIP
...     yield from bps.declare_stream(flyer, name="primary", collect=True)
...     yield from bps.kickoff(flyer, wait=True)
...     yield from bps.complete(flyer, wait=True)
...     yield from bps.collect(flyer, name="primary")  # once: see pause()
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

from bluesky.utils import NoReplayAllowed
from event_model import compose_stream_resource
from ophyd.status import Status
from ophyd.utils.errors import InvalidState

from multiscope.compat import is_staged
from multiscope.devices.areadetector import ATTRIBUTES_PATH, DATA_PATH, MIMETYPE

__all__ = ["FlyingCamera"]

logger = logging.getLogger(__name__)

_POLL_S = 0.05  # how often the watcher checks the connection while frames come


class FlyingCamera:
    """A staged :class:`~multiscope.devices.areadetector.StreamingCamera`, free-running.

    Parameters
    ----------
    camera : StreamingCamera
        The camera; stage it before :meth:`kickoff` (the plan's ``stage_decorator``).
    num_frames : int, optional
        Frames per acquisition (settable later with :meth:`prepare`).
    frame_period_s : float, optional
        Time between frame starts (s); the IOC uses ``max(period, AcquireTime)``.
    attributes : tuple of str, optional
        Per-frame attributes (``/entry/instrument/NDAttributes/<name>``) described as
        data keys ``<camera>_<name>``; the IOC must record them.
    complete_margin : float, optional
        Seconds added to ``num_frames * period`` before :meth:`complete` fails.
    start_trigger : PositionTrigger, optional
        Start the frames on this position compare's pulse (camera ``TriggerMode``
        External, armed at kickoff) instead of at kickoff; :meth:`prepare` takes its
        ``start_position`` and ``start_timeout_s``.
    name : str, optional
        Name (descriptor ``object_keys``); the camera's name by default.
    """

    def __init__(
        self,
        camera,
        *,
        num_frames: int = 1,
        frame_period_s: float = 0.0,
        attributes: tuple[str, ...] = ("theta",),
        complete_margin: float = 5.0,
        start_trigger=None,
        name: str | None = None,
    ):
        self.camera = camera
        self._name = name or camera.name
        self.num_frames = int(num_frames)
        self.frame_period_s = float(frame_period_s)
        self.attributes = tuple(attributes)
        self.complete_margin = float(complete_margin)
        self.start_trigger = start_trigger
        self.start_position: float | None = None  # where start_trigger fires
        self.start_timeout_s = 0.0  # longest wait for the start pulse after kickoff
        self._lock = threading.Lock()
        self._settling = weakref.WeakSet()  # statuses this flyer has finished or failed
        self._prepared: dict | None = None  # restore values of settings put by prepare()
        self._prepared_file = ""  # the capture file they were put for
        self._watcher: threading.Thread | None = None
        self._abandoned = False  # paused mid-acquisition: resume() opens a new file
        self._reset()

    def _reset(self) -> None:
        self._first_row: int | None = None  # file row of the first fly frame
        self._emitted = 0  # frames already referenced by stream_datum
        self._bundles: dict[str, object] = {}
        self._kickoff_status: Status | None = None
        self._complete_status: Status | None = None
        self._restore: dict = {}

    # -- identity --------------------------------------------------------------------

    @property
    def name(self) -> str:
        """Name of the flyer (``object_keys`` of the descriptor)."""
        return self._name

    @property
    def parent(self):
        """No parent: the RunEngine treats the flyer as a top-level object."""
        return None

    @property
    def image_key(self) -> str:
        """Data key of the frames (the camera's, as in its step-scan streams)."""
        return self.camera.image_key

    def attribute_key(self, attribute: str) -> str:
        """Data key of a per-frame attribute, ``<camera>_<attribute>``."""
        return f"{self.camera.name}_{attribute}"

    # -- configuration ---------------------------------------------------------------

    def prepare(self, value: dict | None = None) -> Status:
        """Set the next acquisition (bluesky ``Preparable``).

        ``value`` may hold ``num_frames``, ``frame_period_s`` and, with a
        ``start_trigger``, ``start_position`` (axis units, required before kickoff)
        and ``start_timeout_s`` (the longest wait for the pulse after kickoff).

        With the camera staged, the settings (frames, period, mode, trigger) are also
        put to the IOC now, so kickoff is a single put (Acquire). Staging after this
        would overwrite them, so they are only put while staged.
        """
        value = value or {}
        if "num_frames" in value:
            self.num_frames = int(value["num_frames"])
        if "frame_period_s" in value:
            self.frame_period_s = float(value["frame_period_s"])
        if "start_position" in value or "start_timeout_s" in value:
            if self.start_trigger is None:
                raise ValueError(f"{self.name}: start_position needs a start_trigger")
            if "start_position" in value:
                self.start_position = float(value["start_position"])
            self.start_timeout_s = max(0.0, float(value.get("start_timeout_s", 0.0)))
        if is_staged(self.camera):
            restore = self._apply_settings()
            if self._prepared is None:
                self._prepared = restore
            else:  # a second prepare: the first's restore values stand, its own are added
                for signal, old in restore.items():
                    self._prepared.setdefault(signal, old)
            # Staging again (a new file) puts the stage's own settings: prepare anew then.
            self._prepared_file = self.camera.hdf1.full_file_name.get(use_monitor=False)
        status = Status(obj=self)
        status.set_finished()
        return status

    def period(self) -> float:
        """Effective frame period (s): the IOC never starts frames closer than AcquireTime."""
        exposure = float(self.camera.cam.acquire_time.get())
        return max(self.frame_period_s, exposure)

    def complete_timeout(self) -> float:
        """Seconds from kickoff until :meth:`complete` fails."""
        wait = self.start_timeout_s if self.start_trigger is not None else 0.0
        return wait + self.num_frames * self.period() + self.complete_margin

    def describe_configuration(self):
        """The camera's configuration (exposure, sizes, ...)."""
        return self.camera.describe_configuration()

    def read_configuration(self):
        """The camera's configuration readings."""
        return self.camera.read_configuration()

    def describe_collect(self) -> dict:
        """Data keys of the collected stream: frames and per-frame attributes (file-referenced)."""
        ny = int(self.camera.cam.array_size.array_size_y.get())
        nx = int(self.camera.cam.array_size.array_size_x.get())
        source = f"PV:{self.camera.prefix}HDF1:FullFileName_RBV"
        keys = {
            self.image_key: {
                "source": source,
                "dtype": "array",
                "dtype_numpy": "<u2",
                "shape": [1, ny, nx],
                "external": "STREAM:",
            }
        }
        for attribute in self.attributes:
            keys[self.attribute_key(attribute)] = {
                "source": f"{source} {ATTRIBUTES_PATH}/{attribute}",
                "dtype": "number",
                "dtype_numpy": "<f8",
                "shape": [],
                "external": "STREAM:",
            }
        return keys

    # -- acquisition -----------------------------------------------------------------

    def _captured(self) -> int:
        """Frames in the capture file now (the plugin's NumCaptured_RBV)."""
        return int(self.camera.hdf1.num_captured.get(use_monitor=False))

    def kickoff(self) -> Status:
        """Configure free-running acquisition and start it.

        Returns
        -------
        Status
            Done once the IOC reports the acquisition running (or already finished).

        Raises
        ------
        RuntimeError
            If the camera is not staged, or a previous acquisition is still running.
        """
        camera = self.camera
        if not is_staged(camera) or camera.hdf1.capture.get(use_monitor=False) != 1:
            raise RuntimeError(f"{self.name}: stage the camera (open its capture) before kickoff")
        if self._complete_status is not None and not self._complete_status.done:
            raise RuntimeError(f"{self.name}: kickoff while the previous acquisition runs")
        if self.num_frames < 1:
            raise ValueError(f"{self.name}: num_frames must be >= 1, got {self.num_frames}")
        if self.start_trigger is not None and self.start_position is None:
            raise ValueError(f"{self.name}: prepare a start_position for the start trigger")
        file_name = camera.hdf1.full_file_name.get(use_monitor=False)
        self._abandoned = False  # a new acquisition (an abandoned one ended with an abort)
        prepared, self._prepared = self._prepared, None
        if file_name != self._prepared_file:
            prepared = None  # prepared for an earlier staging
        self._reset()
        cam = camera.cam
        timeout = 5.0
        self._restore = prepared if prepared is not None else self._apply_settings()
        self._first_row = self._captured()
        self._make_resources(Path(file_name).absolute())

        kickoff = self._kickoff_status = Status(obj=self, timeout=timeout)
        complete = self._complete_status = Status(obj=self, timeout=self.complete_timeout())

        def started(*, value, **kwargs):
            if value == 1:
                self._finish(kickoff)

        ended = threading.Event()

        def acquired(*args, **kwargs):
            # Put-completion of Acquire: the IOC has written every frame (or stopped).
            self._finish(kickoff)
            ended.set()

        cid = cam.acquire.subscribe(started, run=False)
        kickoff.add_callback(lambda status: cam.acquire.unsubscribe(cid))
        cam.acquire.put(1, use_complete=True, callback=acquired)
        self._watcher = threading.Thread(
            target=self._watch, args=(complete, ended), name=f"{self.name}-watch", daemon=True
        )
        self._watcher.start()
        return kickoff

    def _apply_settings(self) -> dict:
        """Set frames, period, mode and trigger for a fly acquisition; return what to restore."""
        cam = self.camera.cam
        timeout = 5.0
        settings = [
            (cam.num_images, self.num_frames),
            (cam.acquire_period, self.frame_period_s),
            (cam.image_mode, "Multiple"),
        ]
        if self.start_trigger is not None and self.start_position is not None:
            settings.append((cam.trigger_mode, "External"))
        # Restored when the acquisition ends: later step-scan triggers (flats at the end)
        # must acquire the camera's own number of frames, at once, again.
        restore = {signal: signal.get() for signal, _ in settings}
        if self.start_trigger is not None and self.start_position is not None:
            settings.insert(0, (self.start_trigger.fire_at, self.start_position))
        for signal, value in settings:
            signal.set(value, timeout=timeout).wait(timeout)
        return restore

    def complete(self) -> Status:
        """Status done when the ``num_frames`` frames are written (see :meth:`kickoff`)."""
        if self._complete_status is None:
            raise RuntimeError(f"{self.name}: complete() before kickoff()")
        return self._complete_status

    def stop(self, *, success: bool = False) -> None:
        """Stop a running acquisition (the frames written so far stay collectable)."""
        if self._complete_status is not None and not self._complete_status.done:
            self.camera.cam.acquire.put(0)
        if self._prepared is not None:  # prepared, never kicked off: settings back
            self._restore, self._prepared = self._prepared, None
            self._restore_settings()

    # -- interruptions ----------------------------------------------------------------

    def pause(self) -> None:
        """Abandon an acquisition not yet collected (RunEngine pause or suspension).

        A fly acquisition cannot go on where it stopped (the rotation is stopped too):
        the camera stops, the statuses end (the RunEngine no longer waits for them),
        and the rewound plan kicks off again, into a new file (:meth:`resume`). The
        abandoned frames were never collected, so no document refers to them.

        Raises
        ------
        NoReplayAllowed
            When the acquisition's frames were collected: they are in the run, and a
            replay would take them again.
        """
        if self._first_row is None:
            return
        if self._emitted:
            raise NoReplayAllowed(f"{self.name}: the acquisition's frames are in the run")
        self._abandoned = True
        for status in (self._kickoff_status, self._complete_status):
            if status is not None:
                self._finish(status)
        try:
            self.camera.cam.acquire.put(0)
        except Exception as ex:  # an IOC that is gone has nothing to stop
            logger.warning("%s: could not stop the acquisition on pause: %s", self.name, ex)
        watcher = self._watcher
        if watcher is not None:  # it restores the camera's settings once the IOC stops
            watcher.join(self.complete_margin)

    def resume(self) -> None:
        """After an abandoned acquisition, move the camera to a new capture file."""
        if not self._abandoned:
            return
        self._abandoned = False
        self._reset()
        self.camera.next_file()

    def _finish(self, status: Status, exc: Exception | None = None) -> None:
        with self._lock:
            # ``done`` turns True only once ophyd's callback thread has run, so a second
            # caller (Acquire's monitor and its put-completion, close together) would
            # see it False and raise InvalidState: remember which statuses we settled.
            if status.done or status in self._settling:
                return
            self._settling.add(status)
            try:
                if exc is None:
                    status.set_finished()
                else:
                    status.set_exception(exc)
            except InvalidState:
                pass  # its own timeout settled it a moment earlier: that result stands

    def _watch(self, complete: Status, ended: threading.Event) -> None:
        """Wait for the end of the acquisition; fail early if the IOC goes away."""
        acquire = self.camera.cam.acquire
        while not ended.wait(_POLL_S):
            if complete.done and not self._abandoned:  # timed out
                self._fail_kickoff(complete)
                return
            if not acquire.connected:
                exc = RuntimeError(f"{self.name}: camera IOC disconnected during acquisition")
                self._finish(complete, exc)
                self._fail_kickoff(complete)
                return
        try:
            written = self._captured() - int(self._first_row or 0)
            self._restore_settings()
        except Exception as ex:  # the IOC died between the last frame and here
            self._finish(complete, RuntimeError(f"{self.name}: cannot check frames: {ex}"))
            return
        if written < self.num_frames:
            message = f"{self.name}: acquisition ended after {written} of {self.num_frames} frames"
            self._finish(complete, RuntimeError(message))
        else:
            self._finish(complete)

    def _fail_kickoff(self, complete: Status) -> None:
        kickoff = self._kickoff_status
        if kickoff is not None:
            self._finish(kickoff, complete.exception() or RuntimeError("acquisition failed"))

    def _restore_settings(self) -> None:
        timeout = 5.0
        for signal, value in self._restore.items():
            signal.set(value, timeout=timeout).wait(timeout)
        self._restore = {}

    # -- documents -------------------------------------------------------------------

    def _make_resources(self, path: Path) -> None:
        ny = int(self.camera.cam.array_size.array_size_y.get())
        nx = int(self.camera.cam.array_size.array_size_x.get())
        first = int(self._first_row or 0)
        # tiled's consolidator applies the first resource's ``slice`` to the rows of all
        # the stream's resources joined, so a stream of several fly acquisitions (one
        # file each, xanes_3d) must not carry one: only a window not at row 0 needs it.
        window = {"slice": f"{first}:{first + self.num_frames}"} if first else {}
        datasets = {self.image_key: (DATA_PATH, {"chunk_shape": [1, ny, nx]})}
        for attribute in self.attributes:
            datasets[self.attribute_key(attribute)] = (f"{ATTRIBUTES_PATH}/{attribute}", {})
        for key, (dataset, extra) in datasets.items():
            self._bundles[key] = compose_stream_resource(
                mimetype=MIMETYPE,
                uri=f"file://localhost{path}",
                data_key=key,
                parameters={"dataset": dataset, **window, **extra},
            )

    def get_index(self) -> int:
        """Frames of this acquisition written to the file so far (0 before kickoff)."""
        if self._first_row is None:
            return 0
        return max(0, min(self.num_frames, self._captured() - self._first_row))

    def collect_asset_docs(self, index: int | None = None) -> Iterator[tuple[str, dict]]:
        """StreamResources (first call with frames), then StreamDatums up to ``index`` frames.

        Parameters
        ----------
        index : int, optional
            Collect up to this many frames of the acquisition (the RunEngine passes the
            lowest index of several collected objects); all written frames by default.
        """
        if self._first_row is None:
            return
        available = self.get_index()
        upto = available if index is None else min(int(index), available)
        if upto <= self._emitted:
            return
        if self._emitted == 0:
            for bundle in self._bundles.values():
                yield "stream_resource", bundle.stream_resource_doc
        first = self._first_row
        indices = {"start": first + self._emitted, "stop": first + upto}
        for bundle in self._bundles.values():
            yield "stream_datum", bundle.compose_stream_datum(indices=indices)
        self._emitted = upto
