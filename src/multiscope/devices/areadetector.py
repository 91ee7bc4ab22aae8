"""Area-detector camera that writes HDF5 and emits StreamResource/StreamDatum documents.

Built from ophyd's areaDetector classes (``DetectorBase``, ``CamBase``,
``HDF5Plugin``). On stage, the IOC's HDF5 plugin is pointed at
``datetime.now().strftime(write_path_template)`` (the session sets e.g.
``<data_dir>/assets/<instrument>/%Y/%m/%d/``), capture opens in Stream mode, and
each trigger acquires ``num_images`` frames that the IOC appends to one file::

    stage   -> FilePath, FileName=<uuid>, Stream, Capture=1   (one file per stage)
    trigger -> Acquire=1 (put-completion = frames written; finite timeout)
    collect_asset_docs -> StreamResource (once per stage), StreamDatum per trigger
    unstage -> Capture=0 (the IOC closes the file)

Interruptions (a pause, a suspension) rewind a plan to its last checkpoint and
replay it; the camera keeps the file and the events one-to-one through them
(decision 0011)::

    pause   -> an exposure in progress is stopped (the IOC discards an unfinished
               frame, as areaDetector drivers do); a frame finished before the stop
               is kept for its point
    trigger -> with ``point_key`` set (plans set it after each checkpoint), a replayed
               point whose frame is already in the file re-reports that row instead
               of exposing again; a new key means the last point's event was saved
    collect -> the StreamResource goes with each datum until the RunEngine has emitted
               it (a rewind between a read and its save drops the asset documents the
               read collected); the session tells the camera what was emitted
               (:meth:`StreamingCamera.follow_emitted`); a camera not told sends it once

The frames' data key ``<name>_image`` is described with
``external="STREAM:"`` and shape ``[num_images, ny, nx]`` (``[ny, nx]`` fails
to read back; docs/stack-facts.md). Per-frame attributes the IOC records (e.g. a
rotation angle at exposure) are in the same file under
``/entry/instrument/NDAttributes/<name>``; :meth:`StreamingCamera.attribute_path`
names them for analysis.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from event_model import compose_stream_resource
from ophyd import Component as Cpt
from ophyd import DetectorBase, EpicsSignalRO, Signal
from ophyd.areadetector import ADComponent as ADCpt
from ophyd.areadetector import EpicsSignalWithRBV as SignalWithRBV
from ophyd.areadetector.cam import CamBase
from ophyd.areadetector.plugins import HDF5Plugin_V22
from ophyd.device import DEFAULT_CONNECTION_TIMEOUT
from ophyd.status import DeviceStatus, Status
from ophyd.utils.errors import InvalidState

from multiscope.compat import allow_slow_reads, forget_staging

logger = logging.getLogger(__name__)

__all__ = ["DATA_PATH", "ATTRIBUTES_PATH", "StreamingCamera", "StreamHDF5Plugin"]

DATA_PATH = "/entry/data/data"
ATTRIBUTES_PATH = "/entry/instrument/NDAttributes"
MIMETYPE = "application/x-hdf5"
# caproto re-sends an unanswered search at most every 5 s (its back-off's ceiling):
# 5 s let a camera's channels miss a restarted IOC by one retry (a CI rehearsal).
RECONNECT_TIMEOUT_S = 10.0
# Seconds the staged signals wait for a read's answer (ophyd's default: 2 s).
SLOW_READ_TIMEOUT_S = 5.0


class StreamHDF5Plugin(HDF5Plugin_V22):
    """``HDF5Plugin`` (ADCore >= 2.2, which has CreateDirectory) for Stream capture.

    ``plugin_type`` and ``nd_array_port`` are re-declared ``string=True``: ADCore
    serves them as string records, which read as ``str`` either way, but an IOC
    serving them as CHAR waveforms (the simulated cameras before decision 0022) reads
    as an array without it, and ophyd's plugin-type and asyn-port checks fail on one.
    """

    plugin_type = Cpt(EpicsSignalRO, "PluginType_RBV", string=True, lazy=False, kind="config")
    nd_array_port = Cpt(SignalWithRBV, "NDArrayPort", string=True, kind="config")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stage_sigs.update(
            [
                ("file_write_mode", "Stream"),
                ("num_capture", 0),  # capture until unstage
                ("auto_increment", "Yes"),
                ("auto_save", "No"),
                ("create_directory", -5),  # the IOC creates up to 5 missing levels
                ("file_template", "%s%s_%6.6d.h5"),
            ]
        )


#: Lazy PVs of the driver and file plugin that the camera's methods use (besides the
#: stage_sigs, which :meth:`StreamingCamera.used_signal_names` adds).
_USED_SIGNALS = (
    "cam.acquire_time", "cam.acquire_period", "cam.num_images", "cam.trigger_mode",
    "cam.detector_state",
    "cam.array_size.array_size_x", "cam.array_size.array_size_y",
    "hdf1.capture", "hdf1.num_captured", "hdf1.full_file_name", "hdf1.file_path",
    "hdf1.file_path_exists", "hdf1.file_name", "hdf1.file_number",
    # ophyd's stage reads these (the plugin primed, the asyn ports chained); a 1 s lazy
    # connect of ArraySize2_RBV failed there under load
    "hdf1.array_size.depth", "hdf1.array_size.height", "hdf1.array_size.width",
    "cam.port_name", "hdf1.port_name",
)  # fmt: skip


class _PointKey(Signal):
    """A soft signal whose ``set`` is done at once (ophyd's ``Signal.set`` puts on a thread,
    so a trigger right after it could still read the previous point's key)."""

    def set(self, value, **kwargs):
        self.put(value)
        status = Status(obj=self)
        status.set_finished()
        return status


@contextlib.contextmanager
def _no_lazy_waits(*devices):
    """Within: the lazy signals ``devices`` make are not waited for, one by one."""
    saved = [device.__dict__.get("lazy_wait_for_connection") for device in devices]
    for device in devices:
        device.lazy_wait_for_connection = False
    try:
        yield
    finally:
        for device, value in zip(devices, saved, strict=True):
            if value is None:
                del device.lazy_wait_for_connection
            else:
                device.lazy_wait_for_connection = value


def _make_lazy_signal(device, dotted: str) -> None:
    """Instantiate ``device.<dotted>`` without ophyd's blocking wait for a lazy PV."""
    *path, attr = dotted.split(".")
    owner = device
    for part in path:
        owner = getattr(owner, part)
    saved = owner.__dict__.get("lazy_wait_for_connection")
    owner.lazy_wait_for_connection = False
    try:
        getattr(owner, attr)
    finally:
        if saved is None:
            del owner.lazy_wait_for_connection
        else:
            owner.lazy_wait_for_connection = saved


class StreamingCamera(DetectorBase):
    """A camera whose frames go to HDF5 and reach the run as stream documents.

    Parameters
    ----------
    prefix : str
        Detector prefix, e.g. ``DEMO:`` (driver ``cam1:``, plugin ``HDF1:``).
    name : str
        ophyd name; the frames' data key is ``<name>_image``.
    write_path_template : str, optional
        strftime template of the directory the IOC writes to; also settable
        through the ``write_path_template`` signal. Must be set before stage.
    num_images : int, optional
        Frames per trigger.
    trigger_margin : float, optional
        Seconds added to ``num_images * max(AcquireTime, AcquirePeriod)`` before a
        trigger fails.
    """

    # detector driver and file writer (no explicit kind: setting a kind on an
    # areaDetector sub-device instantiates, and so connects, all its lazy PVs)
    cam = ADCpt(CamBase, "cam1:")
    hdf1 = ADCpt(StreamHDF5Plugin, "HDF1:")

    # acquisition settings (soft signals: anything a plan sets is a signal)
    write_path_template = Cpt(Signal, value="", kind="config")
    images_per_trigger = Cpt(Signal, value=1, kind="config")
    # Identity of the point the next trigger acquires (set by plans after each checkpoint,
    # so a rewind replays it): a replayed point reuses its frame (see the module docstring).
    point_key = Cpt(_PointKey, value=None, kind="omitted")

    def __init__(
        self,
        prefix: str = "",
        *,
        name: str,
        write_path_template: str = "",
        num_images: int = 1,
        trigger_margin: float = 5.0,
        **kwargs,
    ):
        super().__init__(prefix, name=name, **kwargs)
        self.write_path_template.put(write_path_template)
        self.images_per_trigger.put(int(num_images))
        self.trigger_margin = float(trigger_margin)
        self.stage_sigs.update(
            [
                ("cam.acquire", 0),  # stop any acquisition in progress
                ("cam.image_mode", "Multiple"),
                ("cam.array_callbacks", "Enable"),
            ]
        )
        self._resource = None
        self._datum_factory = None
        self._frame_shape: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._follows_emission = False
        self._reset_file_state()

    def _reset_file_state(self) -> None:
        """Forget the bookkeeping of the current capture file (a new file, or none)."""
        # (key, row) of the last exposure in the file (a row is ``num_images`` frames)
        self._last_point: tuple[object, int] | None = None
        self._to_collect: list[int] = []  # rows whose datums the next collect emits
        self._in_flight: _Exposure | None = None  # the trigger exposing now
        self._resource_emitted = False  # the RunEngine emitted the StreamResource

    @property
    def _next_row(self) -> int:
        """Row of the file the next exposure writes."""
        return 0 if self._last_point is None else self._last_point[1] + 1

    def follow_emitted(self, subscribe) -> int:
        """Learn which StreamResources the RunEngine emitted: ``subscribe`` is ``RE.subscribe``.

        Without it the camera sends each StreamResource once, which a rewind between
        the read that collected it and its save would lose. Returns the token.
        """
        self._follows_emission = True
        return subscribe(self._note_emitted, "stream_resource")

    def _note_emitted(self, name: str, doc: dict) -> None:
        with self._lock:
            if self._resource is not None and doc.get("uid") == self._resource["uid"]:
                self._resource_emitted = True

    # -- connection -------------------------------------------------------------

    def used_signal_names(self) -> list[str]:
        """Dotted names of the lazy areaDetector PVs this camera uses itself.

        Staging, triggering and flying use them; everything the stage puts is
        included, and what a run reads and describes (the read and configuration
        attributes: a 1 s lazy connect of ``cam1:NumExposures_RBV`` at a run's first
        ``describe_configuration`` failed on CI). Subclasses using more PVs extend it.
        """
        names = list(_USED_SIGNALS) + list(self.read_attrs) + list(self.configuration_attrs)
        for owner, sigs in (("", self.stage_sigs), ("cam.", self.cam.stage_sigs),
                            ("hdf1.", self.hdf1.stage_sigs)):  # fmt: skip
            names += [owner + key for key in sigs if isinstance(key, str)]
        names = [n for n in dict.fromkeys(names) if "parent" not in n.split(".")]
        return [n for n in names if not any(m.startswith(n + ".") for m in names)]  # signals

    def wait_for_connection(self, all_signals=False, timeout=DEFAULT_CONNECTION_TIMEOUT):
        """Wait for the camera's PVs, the lazy ones it uses included, all at once.

        ophyd connects a lazy PV at its first use, one at a time, each within the
        1 s default: on a loaded machine the first stage of a run failed that way
        (``HDF1:FilePathExists_RBV``), and the first fly scan's first put cost
        0.1 s. Here they are made without waiting and waited for together, within
        ``timeout``.
        """
        if not all_signals:
            # Listing the read and configuration attributes makes their signals.
            with _no_lazy_waits(self, self.cam, self.hdf1):
                names = self.used_signal_names()
            for dotted in names:
                _make_lazy_signal(self, dotted)
        super().wait_for_connection(all_signals=all_signals, timeout=timeout)

    # -- names ------------------------------------------------------------------

    @property
    def image_key(self) -> str:
        """Data key of the frames."""
        return f"{self.name}_image"

    @staticmethod
    def attribute_path(attribute: str) -> str:
        """HDF5 path of a per-frame attribute recorded by the IOC."""
        return f"{ATTRIBUTES_PATH}/{attribute}"

    @property
    def num_images(self) -> int:
        """Frames per trigger."""
        return int(self.images_per_trigger.get())

    def last_exposure(self) -> tuple[dict, dict] | None:
        """Where the last exposure's frames are: ``(stream_resource, datum)`` or None.

        The datum-like dict (``stream_resource`` uid, ``indices``) is what
        :class:`multiscope.frame_files.FrameReader` reads, so a plan can look at the
        frames it just took (a drift correction) without waiting for the documents.
        """
        with self._lock:
            if self._resource is None or self._last_point is None:
                return None
            row = self._last_point[1]
            resource = dict(self._resource)
        datum = {"stream_resource": resource["uid"], "indices": {"start": row, "stop": row + 1}}
        return resource, datum

    # -- staging ----------------------------------------------------------------

    def _directory(self) -> str:
        template = self.write_path_template.get()
        if not template:
            raise RuntimeError(f"{self.name}: write_path_template is not set")
        path = str(Path(datetime.datetime.now().strftime(template)).absolute())
        return path if path.endswith("/") else path + "/"

    def stage(self):
        """Point the file plugin at a new file and open Stream capture."""
        directory = self._directory()
        self.cam.stage_sigs["num_images"] = self.num_images
        # A client that died mid-run leaves the plugin capturing into its file; close
        # that capture first, or this run's frames would be appended to the old file.
        if self.hdf1.capture.get(use_monitor=False) != 0:
            logger.warning(
                "%s: capture was left on (a previous client died?); closing it", self.name
            )
            self.hdf1.capture.set(0, timeout=5.0).wait(5.0)
        # Likewise a camera left waiting for a fly scan's start pulse would never take a
        # step-scan frame. Not a stage_sig: unstage would put External back.
        if self.cam.trigger_mode.get(as_string=True, use_monitor=False) != "Internal":
            logger.warning("%s: camera left on an external trigger; setting Internal", self.name)
            self.cam.trigger_mode.set("Internal", timeout=5.0).wait(5.0)
        # Unstage reads back every value it restores; a camera busy rendering on a loaded
        # machine answered a read of HDF1:AutoSave_RBV later than ophyd's 2 s (a demo
        # failed in a rehearsal beside a CPU hog).
        allow_slow_reads(self._staged_signals(), SLOW_READ_TIMEOUT_S)
        staged = super().stage()
        self.point_key.put(None)
        try:
            self._open_file(directory)
        except Exception:
            self.unstage()
            raise
        return staged

    def _staged_signals(self) -> list:
        """The signals ``stage`` sets (and ``unstage`` restores) on the camera and its parts."""
        signals = []
        for owner in (self, self.cam, self.hdf1):
            for key in owner.stage_sigs:
                signal = owner
                for part in key.split(".") if isinstance(key, str) else ():
                    signal = getattr(signal, part)
                signals.append(signal if isinstance(key, str) else key)
        return signals

    def _open_file(self, directory: str) -> None:
        """Open a new capture file in ``directory`` and make its StreamResource."""
        timeout = 5.0
        self.hdf1.file_path.set(directory, timeout=timeout).wait(timeout)
        if self.hdf1.file_path_exists.get(use_monitor=False) != 1:
            raise OSError(f"{self.name}: IOC cannot create/write {directory}")
        self.hdf1.file_name.set(uuid.uuid4().hex, timeout=timeout).wait(timeout)
        self.hdf1.file_number.set(0, timeout=timeout).wait(timeout)
        self.hdf1.capture.set(1, timeout=timeout).wait(timeout)
        full_name = self.hdf1.full_file_name.get(use_monitor=False)
        ny = int(self.cam.array_size.array_size_y.get())
        nx = int(self.cam.array_size.array_size_x.get())
        self._frame_shape = (ny, nx)
        parameters = {"dataset": DATA_PATH, "chunk_shape": [1, ny, nx]}
        if self.num_images > 1:
            parameters["multiplier"] = self.num_images
        bundle = compose_stream_resource(
            mimetype=MIMETYPE,
            uri=f"file://localhost{Path(full_name).absolute()}",
            data_key=self.image_key,
            parameters=parameters,
        )
        self._resource = bundle.stream_resource_doc
        self._datum_factory = bundle.compose_stream_datum
        self._reset_file_state()

    def next_file(self) -> None:
        """Close the capture file and open a new one (staged; same directory).

        For frames that no document references and no event will: an interrupted fly
        acquisition's frames, which its replay takes again. The old file keeps them;
        the catalog never reads it.
        """
        if self._resource is None:
            raise RuntimeError(f"{self.name}: next_file() while not staged")
        timeout = 5.0
        directory = self.hdf1.file_path.get(use_monitor=False)
        self.hdf1.capture.set(0, timeout=timeout).wait(timeout)
        self._open_file(directory)

    def unstage(self):
        """Close the capture file and restore the plugin settings.

        If the IOC is gone (the run is failing because of it), nothing can be
        restored: forget the staged state at once instead of spending a connection
        timeout on every staged signal, so the run's real error stays the one shown.
        """
        self._resource = None
        self._datum_factory = None
        self._reset_file_state()
        self.point_key.put(None)
        if not self.hdf1.capture.connected:
            logger.warning("%s: IOC disconnected; unstaged without restoring settings", self.name)
            forget_staging(self, self.cam, self.hdf1)
            return [self]
        # 5 s, not ophyd's 2 s read timeout: an IOC busy rendering on a loaded machine
        # answered later than 2 s and the clean-up failed.
        if self.hdf1.capture.get(timeout=5.0) != 0:
            self.hdf1.capture.set(0, timeout=5.0).wait(5.0)
        return super().unstage()

    # -- acquisition ------------------------------------------------------------

    def trigger_timeout(self) -> float:
        """Seconds one trigger may take before its status fails."""
        # Right after an IOC restart (a resumed run) channels are still reconnecting;
        # wait a little longer than the 1 s default for them, still finitely.
        wait = RECONNECT_TIMEOUT_S
        exposure = float(self.cam.acquire_time.get(connection_timeout=wait))
        period = max(exposure, float(self.cam.acquire_period.get(connection_timeout=wait)))
        return self.num_images * period + self.trigger_margin

    def trigger(self) -> DeviceStatus:
        """Acquire ``num_images`` frames; the status fails after :meth:`trigger_timeout`.

        A point replayed after an interruption (the same ``point_key`` as the last
        exposure, whose frame is in the file) is not exposed again: its row is reported.
        """
        if self._datum_factory is None:
            raise RuntimeError(f"{self.name}: stage() before trigger()")
        key = self.point_key.get()
        self.point_key.put(None)  # a key names one point: a later bare trigger has none
        with self._lock:
            last = self._last_point
            if key is not None and last is not None and last[0] == key:
                if last[1] not in self._to_collect:  # (a pause between trigger and read)
                    self._to_collect.append(last[1])
                status = DeviceStatus(self)
                status.set_finished()
                return status
            status = DeviceStatus(self, timeout=self.trigger_timeout())
            exposure = self._in_flight = _Exposure(key, self._next_row, status)

        def acquired(*args, **kwargs):
            # Put-completion of Acquire: the IOC has written every frame, or was stopped.
            with self._lock:
                if self._in_flight is exposure:
                    self._in_flight = None
                    self._last_point = (exposure.key, exposure.row)
                    self._to_collect.append(exposure.row)
                # else abandoned by pause(), which accounts for the file
            exposure.end()

        self.cam.acquire.put(1, use_complete=True, callback=acquired)
        return status

    def pause(self) -> None:
        """Stop an exposure in progress (RunEngine pause or suspension).

        The IOC discards the unfinished frame; the rewound plan exposes the point
        again. A frame that was finished before the stop is kept for its point (the
        replayed trigger of the same ``point_key`` reports it). Never raises: a camera
        whose IOC is gone has nothing to stop.
        """
        super().pause()
        with self._lock:
            exposure, self._in_flight = self._in_flight, None
        if exposure is None:
            return
        try:
            self.cam.acquire.put(0)
            if not exposure.ended.wait(self.trigger_margin):
                logger.warning("%s: the acquisition did not end after Stop", self.name)
            captured = int(self.hdf1.num_captured.get(use_monitor=False)) // self.num_images
        except Exception as ex:  # an IOC that is gone: nothing was written either
            logger.warning("%s: could not stop the exposure on pause: %s", self.name, ex)
            return
        finally:
            # The RunEngine no longer waits for it, but a status failing later (its
            # timeout) would fail the resumed run: it ends here, successfully.
            exposure.end()
        with self._lock:
            if captured > exposure.row:  # finished before the stop: it is this point's frame
                self._last_point = (exposure.key, exposure.row)

    def describe(self):
        """Readings plus the file-referenced frames (``external="STREAM:"``)."""
        description = super().describe()
        ny = int(self.cam.array_size.array_size_y.get())
        nx = int(self.cam.array_size.array_size_x.get())
        description[self.image_key] = {
            "source": f"PV:{self.prefix}HDF1:FullFileName_RBV",
            "dtype": "array",
            "dtype_numpy": "<u2",
            "shape": [self.num_images, ny, nx],
            "external": "STREAM:",
        }
        return description

    def collect_asset_docs(self) -> Iterator[tuple[str, dict]]:
        """A StreamDatum per exposure since the last call, with the StreamResource until saved."""
        with self._lock:
            rows, self._to_collect = self._to_collect, []
            if not rows or self._datum_factory is None:
                return
            docs = []
            if not self._resource_emitted:
                docs.append(("stream_resource", self._resource))
                self._resource_emitted = not self._follows_emission  # else: when told
            for row in rows:
                datum = self._datum_factory(indices={"start": row, "stop": row + 1})
                docs.append(("stream_datum", datum))
        yield from docs


class _Exposure:
    """One trigger's exposure: its point key, file row, and the end of its acquisition."""

    def __init__(self, key, row: int, status: DeviceStatus):
        self.key = key
        self.row = row
        self.status = status
        self.ended = threading.Event()

    def end(self) -> None:
        """Mark the acquisition ended and its status finished (once; thread-safe)."""
        self.ended.set()
        # Already settled: by pause(), the put-completion, or its own timeout.
        with contextlib.suppress(InvalidState):
            self.status.set_finished()
