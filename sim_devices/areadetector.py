"""A simulated areaDetector camera whose frames go to HDF5 files, not over CA.

The PV layout is the one ophyd's ``AreaDetector``, ``CamBase`` and ``HDF5Plugin``
classes expect: a driver under ``{prefix}cam1:`` and an NDFileHDF5 plugin under
``{prefix}HDF1:``. Frame content comes from a *scene*: a callable given at
construction that receives a :class:`FrameContext` and returns a 2-D uint16
array, optionally with a dict of per-frame attributes::

    def scene(ctx: FrameContext) -> np.ndarray | tuple[np.ndarray, dict[str, float]]

Files (Stream mode, the one the project uses)::

    /entry/data/data                          (n, ny, nx) uint16, one frame per chunk
    /entry/instrument/NDAttributes/NDArrayUniqueId   (n,) int32
    /entry/instrument/NDAttributes/NDArrayTimeStamp  (n,) float64
    /entry/instrument/NDAttributes/<name>            (n,) float64, from the scene

The file is opened in SWMR mode and flushed after every frame, so other processes can
read it while it is written. Attribute datasets come with the first frame (SWMR).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from caproto import ChannelType
from caproto.server import PVGroup, PvpropertyChar, SubGroup, get_pv_pair_wrapper, pvproperty

from sim_devices.ad_plugins import (
    ADCORE_VERSION,
    DATA_TYPES,
    ImagePluginGroup,
    PluginBaseGroup,
    ROIPluginGroup,
    StatsPluginGroup,
    string_pv,
)
from sim_devices.ad_records import CamRecords, HDF5Records
from sim_devices.frames import FrameContext, Scene, normalize_scene_output
from sim_devices.refusal import RefusableEnum

__all__ = [
    "DATA_PATH",
    "ATTRIBUTES_PATH",
    "FrameContext",
    "HDF5FrameWriter",
    "SimAreaDetector",
    "format_file_name",
    "normalize_scene_output",
]

logger = logging.getLogger(__name__)

DATA_PATH = "/entry/data/data"
ATTRIBUTES_PATH = "/entry/instrument/NDAttributes"

#: Frames a camera holds between exposure and file (a real camera's on-board buffer).
#: A buffered frame is its exposure's context, not pixels (rendered when its turn comes),
#: so the buffer is long: 10 s at the fly scans' 20 Hz. A host that renders slower than
#: the frame rate for a while then delays the files, not the exposures (with 4 frames a
#: fly scan's last frames missed the rotation, issue 8).
MAX_BUFFERED_FRAMES = 200

pvproperty_with_rbv = get_pv_pair_wrapper(setpoint_suffix="", readback_suffix="_RBV")

IMAGE_MODES = ("Single", "Multiple", "Continuous")
WRITE_MODES = ("Single", "Capture", "Stream")
DETECTOR_STATES = (
    "Idle",
    "Acquire",
    "Readout",
    "Correct",
    "Saving",
    "Aborting",
    "Error",
    "Waiting",
    "Initializing",
    "Disconnected",
    "Aborted",
)


def format_file_name(template: str, path: str, name: str, number: int) -> str:
    """Apply an areaDetector FileTemplate (C printf with path, name, number)."""
    return template % (path, name, number)


@dataclass
class HDF5FrameWriter:
    """Appends frames (and per-frame attributes) to one SWMR HDF5 file.

    Parameters
    ----------
    path : pathlib.Path
        File to create (overwritten).
    shape : tuple of int
        (ny, nx) of every frame.
    """

    path: Path
    shape: tuple[int, int]
    count: int = 0
    _file: h5py.File | None = field(default=None, repr=False)
    _attr_names: tuple[str, ...] = ()

    def _create(self, attr_names: tuple[str, ...]) -> None:
        ny, nx = self.shape
        f = h5py.File(self.path, "w", libver="latest")
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        data = f.create_dataset(
            DATA_PATH,
            shape=(0, ny, nx),
            maxshape=(None, ny, nx),
            chunks=(1, ny, nx),
            dtype=np.uint16,
        )
        data.attrs["signal"] = 1
        attributes = f.create_group(ATTRIBUTES_PATH)
        attributes.create_dataset("NDArrayUniqueId", (0,), maxshape=(None,), dtype=np.int32)
        attributes.create_dataset("NDArrayTimeStamp", (0,), maxshape=(None,), dtype=np.float64)
        for name in attr_names:
            attributes.create_dataset(name, (0,), maxshape=(None,), dtype=np.float64)
        # Readers may open the file from now on; no dataset can be added later.
        f.swmr_mode = True
        self._file = f
        self._attr_names = attr_names

    @property
    def attribute_names(self) -> tuple[str, ...]:
        """Names of the scene attributes recorded per frame."""
        return self._attr_names

    def write(self, frame: np.ndarray, attrs: Mapping[str, float], unique_id: int, ts: float):
        """Append one frame and its attributes, then flush."""
        if self._file is None:
            self.shape = (int(frame.shape[0]), int(frame.shape[1]))  # HDF1 may get a ROI
            self._create(tuple(sorted(attrs)))
        f = self._file
        n = self.count
        values = {"NDArrayUniqueId": unique_id, "NDArrayTimeStamp": ts}
        values.update({name: attrs.get(name, math.nan) for name in self._attr_names})
        data = f[DATA_PATH]
        data.resize(n + 1, axis=0)
        data[n] = frame
        data.flush()
        group = f[ATTRIBUTES_PATH]
        for name, value in values.items():
            ds = group[name]
            ds.resize(n + 1, axis=0)
            ds[n] = value
            ds.flush()
        self.count = n + 1

    def close(self) -> None:
        """Close the file (creating an empty one if no frame came)."""
        if self._file is None:
            self._create(())
        self._file.close()
        self._file = None


# -- putters shared by setpoint/readback pairs ----------------------------------------


async def _put_acquire(obj, instance, value):
    cam = obj.parent
    return await cam.acquire_put(value)


async def _put_capture(obj, instance, value):
    plugin = obj.parent
    return await plugin.capture_put(value)


async def _put_file_path(obj, instance, value):
    plugin = obj.parent
    return await plugin.file_path_put(value)


async def _put_read_only_size(obj, instance, value):
    # The simulated sensor has a fixed size; keep the readback truthful.
    return obj.readback.value


class CamGroup(CamRecords):
    """The detector driver (``{prefix}cam1:``).

    PVs
    ---
    Acquisition
        ``Acquire``/``Acquire_RBV`` (Done/Acquire; a put of Acquire completes when
        the acquisition ends), ``AcquireTime``/``_RBV`` (s), ``AcquirePeriod``/``_RBV``
        (s), ``NumImages``/``_RBV``, ``NumImagesCounter_RBV``, ``NumExposures``/``_RBV``,
        ``ImageMode``/``_RBV`` (Single/Multiple/Continuous), ``TriggerMode``/``_RBV``
        (Internal/External), ``TimeRemaining_RBV``. Exposures start every
        ``max(AcquirePeriod, AcquireTime)`` on a fixed clock: at Acquire (Internal), or
        at the instrument's start pulse (External: the camera is armed, state Waiting,
        until the detector's ``start_trigger`` fires, e.g. a rotation passing an angle).
        Each frame is rendered and written while the next exposures run (up to
        ``MAX_BUFFERED_FRAMES`` behind), so the rate holds as long as a render fits in
        one period on average over that buffer; beyond, the camera is limited by its
        "readout" (the host) and frames come late (logged).
    Array
        ``ArrayCounter``/``_RBV``, ``ArrayCallbacks``/``_RBV``, ``ArraySizeX_RBV``,
        ``ArraySizeY_RBV``, ``ArraySize0_RBV``/``1``/``2``, ``ArraySize_RBV`` (bytes),
        ``SizeX``/``SizeY``(+_RBV), ``MaxSizeX_RBV``/``MaxSizeY_RBV``, ``DataType``/``_RBV``
        (UInt16 only), ``ColorMode``/``_RBV`` (Mono), ``NDimensions_RBV``.
    Status and identity
        ``DetectorState_RBV``, ``StatusMessage_RBV``; strings (ADCore's stringin):
        ``Manufacturer_RBV``, ``Model_RBV``, ``SerialNumber_RBV``,
        ``FirmwareVersion_RBV``, ``SDKVersion_RBV``, ``DriverVersion_RBV``,
        ``ADCoreVersion_RBV``, ``PortName_RBV`` (CAM1).
    Accepted, not simulated
        The rest of ophyd's ``AreaDetectorCam`` PVs (binning, region, shutter,
        temperature ...: :class:`sim_devices.ad_records.CamRecords`); ``ArrayRate_RBV``
        is the frame rate over the last second.
    """

    acquire = pvproperty_with_rbv(
        name="Acquire",
        dtype=RefusableEnum,  # an acquire_guard's RefusedError fails the put cleanly
        enum_strings=("Done", "Acquire"),
        value="Done",
        put=_put_acquire,
        doc="Start (1) or stop (0) acquisition; put-completion when it ends",
    )
    acquire_time = pvproperty_with_rbv(
        name="AcquireTime", value=0.01, precision=4, doc="Exposure time (s)"
    )
    acquire_period = pvproperty_with_rbv(
        name="AcquirePeriod", value=0.0, precision=4, doc="Time between frame starts (s)"
    )
    num_images = pvproperty_with_rbv(
        name="NumImages", value=1, doc="Frames per acquisition in Multiple mode"
    )
    num_images_counter = pvproperty(
        name="NumImagesCounter_RBV", value=0, read_only=True, doc="Frames in this acquisition"
    )
    num_exposures = pvproperty_with_rbv(
        name="NumExposures", value=1, doc="Exposures per frame (only 1 simulated)"
    )
    image_mode = pvproperty_with_rbv(
        name="ImageMode",
        dtype=ChannelType.ENUM,
        enum_strings=IMAGE_MODES,
        value="Single",
        doc="Single, Multiple (NumImages) or Continuous",
    )
    trigger_mode = pvproperty_with_rbv(
        name="TriggerMode",
        dtype=ChannelType.ENUM,
        enum_strings=("Internal", "External"),
        value="Internal",
        doc="Internal: frames start at Acquire; External: the first waits for the start pulse",
    )
    time_remaining = pvproperty(
        name="TimeRemaining_RBV", value=0.0, read_only=True, doc="Seconds left in acquisition"
    )
    array_counter = pvproperty_with_rbv(
        name="ArrayCounter", value=0, doc="Frames produced since last reset"
    )
    array_callbacks = pvproperty_with_rbv(
        name="ArrayCallbacks",
        dtype=ChannelType.ENUM,
        enum_strings=("Disable", "Enable"),
        value="Enable",
        doc="Pass frames to plugins (the HDF5 writer)",
    )
    array_size_x = pvproperty(name="ArraySizeX_RBV", value=0, read_only=True, doc="Frame width")
    array_size_y = pvproperty(name="ArraySizeY_RBV", value=0, read_only=True, doc="Frame height")
    array_size0 = pvproperty(name="ArraySize0_RBV", value=0, read_only=True, doc="Dim 0 (x)")
    array_size1 = pvproperty(name="ArraySize1_RBV", value=0, read_only=True, doc="Dim 1 (y)")
    array_size2 = pvproperty(name="ArraySize2_RBV", value=0, read_only=True, doc="Dim 2 (0)")
    array_size_bytes = pvproperty(
        name="ArraySize_RBV", value=0, read_only=True, doc="Bytes per frame"
    )
    size_x = pvproperty_with_rbv(
        name="SizeX", value=0, put=_put_read_only_size, doc="Region width (fixed)"
    )
    size_y = pvproperty_with_rbv(
        name="SizeY", value=0, put=_put_read_only_size, doc="Region height (fixed)"
    )
    max_size_x = pvproperty(name="MaxSizeX_RBV", value=0, read_only=True, doc="Sensor width")
    max_size_y = pvproperty(name="MaxSizeY_RBV", value=0, read_only=True, doc="Sensor height")
    ndimensions = pvproperty(name="NDimensions_RBV", value=2, read_only=True, doc="Frame rank")
    data_type = pvproperty_with_rbv(
        name="DataType",
        dtype=ChannelType.ENUM,
        enum_strings=DATA_TYPES,
        value="UInt16",
        readback_kw={"record": "mbbi"},  # DataType_RBV.DISA: ophyd's dtype_numpy reads it
        doc="Pixel type (UInt16 only)",
    )
    color_mode = pvproperty_with_rbv(
        name="ColorMode",
        dtype=ChannelType.ENUM,
        enum_strings=("Mono",),
        value="Mono",
        doc="Colour mode (Mono only)",
    )
    detector_state = pvproperty(
        name="DetectorState_RBV",
        dtype=ChannelType.ENUM,
        enum_strings=DETECTOR_STATES,
        value="Idle",
        read_only=True,
        doc="Detector state",
    )
    status_message = pvproperty(
        name="StatusMessage_RBV",
        value="Idle",
        max_length=256,
        dtype=PvpropertyChar,
        string_encoding="utf-8",
        read_only=True,
        doc="Last status message",
    )
    # ADBase's identity records are stringin (DBR_STRING), as ophyd reads them.
    manufacturer = string_pv("Manufacturer_RBV", "multiscope", "Manufacturer")
    model = string_pv("Model_RBV", "SimCamera", "Model")
    serial_number = string_pv("SerialNumber_RBV", "0", "Serial number")
    firmware_version = string_pv("FirmwareVersion_RBV", ADCORE_VERSION, "Firmware version")
    sdk_version = string_pv("SDKVersion_RBV", ADCORE_VERSION, "SDK version")
    driver_version = string_pv("DriverVersion_RBV", ADCORE_VERSION, "Driver version")
    core_version = string_pv("ADCoreVersion_RBV", ADCORE_VERSION, "ADCore version")
    port_name = string_pv("PortName_RBV", "CAM1", "asyn port")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()

    @property
    def detector(self) -> SimAreaDetector:
        """The owning detector group."""
        return self.parent

    @property
    def acquiring(self) -> bool:
        """True while an acquisition (started by an Acquire put) runs."""
        return self._task is not None and not self._task.done()

    @array_size_x.startup
    async def array_size_x(self, instance, async_lib):
        """Publish the fixed frame geometry."""
        ny, nx = self.detector.shape
        for prop, value in (
            (self.array_size_x, nx),
            (self.array_size_y, ny),
            (self.array_size0, nx),
            (self.array_size1, ny),
            (self.array_size2, 0),
            (self.array_size_bytes, 2 * nx * ny),
            (self.max_size_x, nx),
            (self.max_size_y, ny),
            (self.size_x.setpoint, nx),
            (self.size_x.readback, nx),
            (self.size_y.setpoint, ny),
            (self.size_y.readback, ny),
        ):
            await prop.write(value, verify_value=False)

    async def acquire_put(self, value) -> str:
        """Handle an Acquire put: 1 starts and waits for the end, 0 stops."""
        start = value in (1, "Acquire")
        if not start:
            self._stop.set()
            return "Done"
        if self._task is None or self._task.done():
            if self.detector.acquire_guard is not None:
                await self.detector.acquire_guard(self.detector)  # raises to refuse
            self._stop.clear()
            self._task = asyncio.get_running_loop().create_task(self._acquire())
        # Put-completion: the client's put finishes when the acquisition ends.
        await asyncio.shield(self._task)
        return "Done"

    async def _sleep_or_stop(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return True if a stop came first."""
        if seconds <= 0:
            return self._stop.is_set()
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _sleep_until_or_stop(self, deadline: float) -> bool:
        """Sleep until monotonic time ``deadline``; return True if a stop came first."""
        return await self._sleep_or_stop(deadline - time.monotonic())

    async def _start_time(self, external: bool) -> float | None:
        """Monotonic time the first exposure starts: now, or the start pulse (External).

        Armed, the camera waits for the detector's ``start_trigger``; the pulse's own
        time starts the frame clock, so the first frame is exposed where the
        instrument fired it, however late this task wakes. None if stopped first.
        """
        if not external:
            return time.monotonic()
        source = self.detector.start_trigger
        if source is None:
            raise RuntimeError("TriggerMode External: no start trigger is wired to this camera")
        pulse = asyncio.ensure_future(source())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({pulse, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pulse, stop):
                task.cancel()
        if not pulse.done() or pulse.cancelled():
            return None
        await self.detector_state.write("Acquire")
        return pulse.result()

    async def _deliver(
        self, ctx: FrameContext, total: float, period: float, after: asyncio.Task | None
    ) -> None:
        """Render one exposed frame after the previous one, hand it to the plugin, count it."""
        if after is not None:
            await after  # frames reach the plugin in order (a failure propagates)
        await self.detector.process_frame(ctx)
        await self.array_counter.setpoint.write(ctx.frame_index, verify_value=False)
        await self.array_counter.readback.write(ctx.frame_index)
        done = ctx.image_index + 1
        await self.num_images_counter.write(done)
        if not math.isinf(total):
            await self.time_remaining.write(max(0.0, (total - done) * period))

    async def _acquire(self) -> None:
        mode = self.image_mode.readback.value
        if mode == "Single":
            total = 1
        elif mode == "Multiple":
            total = max(1, int(self.num_images.readback.value))
        else:
            total = math.inf
        exposure = max(0.0, float(self.acquire_time.readback.value))
        scale = self.detector.time_scale  # wall s per instrument s (the clock runs on wall s)
        period = max(exposure, float(self.acquire_period.readback.value)) * scale
        external = self.trigger_mode.readback.value == "External"
        await self.acquire.setpoint.write("Acquire", verify_value=False)
        await self.acquire.readback.write("Acquire")
        await self.detector_state.write("Waiting" if external else "Acquire")
        await self.num_images_counter.write(0)
        # Exposures start on a fixed clock (one every ``period``); each frame is rendered
        # and written while the next exposures run, in order, from a buffer of at most
        # MAX_BUFFERED_FRAMES frames, so renders (or a slow disk) slower than the period
        # for a while do not stretch it. The scene evaluates the motors at each frame's
        # own mid-exposure time, however late it renders.
        in_flight: collections.deque[asyncio.Task] = collections.deque()
        base = int(self.array_counter.readback.value)
        index = 0
        try:
            start = await self._start_time(external)
            if start is None:  # stopped while armed
                total = 0
            while index < total:
                end = start + exposure * scale
                if await self._sleep_until_or_stop(end):
                    break
                while in_flight and in_flight[0].done():
                    in_flight.popleft().result()
                if len(in_flight) >= MAX_BUFFERED_FRAMES:
                    await in_flight.popleft()
                    now = time.monotonic()
                    if now - end > period:
                        # The buffer stayed full: as a camera limited by its readout, this
                        # frame ends now and the clock restarts from here.
                        logger.warning(
                            "camera buffer of %d frames full: frame %d %.3f s late",
                            MAX_BUFFERED_FRAMES, index + 1, now - end,
                        )  # fmt: skip
                        end = now
                ctx = FrameContext(
                    exposure_time=exposure,
                    frame_index=base + index + 1,
                    image_index=index,
                    shape=self.detector.shape,
                    # wall-clock end of the exposure (the scene evaluates motors before it)
                    timestamp=time.time() - (time.monotonic() - end),
                    rng=self.detector.rng,
                    ioc=self.detector.ioc,
                    end_monotonic=end,
                )
                after = in_flight[-1] if in_flight else None
                in_flight.append(
                    asyncio.get_running_loop().create_task(self._deliver(ctx, total, period, after))
                )
                index += 1
                start = end - exposure * scale + period
            # Every exposed frame is written before the acquisition completes.
            while in_flight:
                await in_flight.popleft()
        except Exception as ex:
            logger.exception("Acquisition failed")
            await self.status_message.write(f"Error: {ex}"[:255])
            await self.detector_state.write("Error")
        else:
            await self.detector_state.write("Idle")
            await self.status_message.write("Idle")
        finally:
            for task in in_flight:
                task.cancel()
            await self.time_remaining.write(0.0)
            await self.acquire.readback.write("Done")
            await self.acquire.setpoint.write("Done", verify_value=False)

    @time_remaining.shutdown
    async def time_remaining(self, instance, async_lib):
        """Stop acquiring when the server shuts down."""
        self._stop.set()


class HDF5PluginGroup(HDF5Records, PluginBaseGroup):
    """The NDFileHDF5 plugin (``{prefix}HDF1:``).

    PVs
    ---
    Plugin
        The NDPluginBase records (:class:`sim_devices.ad_plugins.PluginBaseGroup`;
        ``PluginType_RBV`` NDFileHDF5, ``PortName_RBV`` HDF1, enabled at start).
    File name
        ``FilePath``/``_RBV`` (created if ``CreateDirectory`` is non-zero),
        ``FilePathExists_RBV``, ``CreateDirectory``/``_RBV``, ``FileName``/``_RBV``,
        ``FileTemplate``/``_RBV`` (printf of path, name, number), ``FileNumber``/``_RBV``,
        ``AutoIncrement``/``_RBV``, ``AutoSave``/``_RBV``, ``FullFileName_RBV``.
    Capture
        ``FileWriteMode``/``_RBV`` (Single: one file per frame when AutoSave=Yes;
        Capture: buffer, write at the end; Stream: append each frame),
        ``Capture``/``_RBV`` (returns at once; capture ends on Capture=0 or after
        ``NumCapture`` frames if non-zero), ``NumCapture``/``_RBV``,
        ``NumCaptured_RBV``, ``WriteStatus``, ``WriteMessage``.
    Accepted, not simulated
        The rest of ophyd's ``HDF5Plugin`` PVs (chunking, compression, extra
        dimensions ...: :class:`sim_devices.ad_records.HDF5Records`).
    """

    PLUGIN_TYPE = "NDFileHDF5"
    ENABLED_AT_START = True

    file_path = pvproperty_with_rbv(
        name="FilePath",
        value="",
        max_length=1024,
        dtype=PvpropertyChar,
        string_encoding="utf-8",
        put=_put_file_path,
        doc="Directory for files (a trailing '/' is added)",
    )
    file_path_exists = pvproperty(
        name="FilePathExists_RBV",
        dtype=ChannelType.ENUM,
        enum_strings=("No", "Yes"),
        value="No",
        read_only=True,
        doc="FilePath is an existing directory",
    )
    create_directory = pvproperty_with_rbv(
        name="CreateDirectory", value=0, doc="Non-zero: create FilePath and its parents"
    )
    file_name = pvproperty_with_rbv(
        name="FileName",
        value="image",
        max_length=256,
        dtype=PvpropertyChar,
        string_encoding="utf-8",
        doc="File base name",
    )
    file_template = pvproperty_with_rbv(
        name="FileTemplate",
        value="%s%s_%6.6d.h5",
        max_length=256,
        dtype=PvpropertyChar,
        string_encoding="utf-8",
        doc="printf template of (FilePath, FileName, FileNumber)",
    )
    file_number = pvproperty_with_rbv(name="FileNumber", value=0, doc="Number of the next file")
    auto_increment = pvproperty_with_rbv(
        name="AutoIncrement",
        dtype=ChannelType.ENUM,
        enum_strings=("No", "Yes"),
        value="Yes",
        doc="Increment FileNumber after each file",
    )
    auto_save = pvproperty_with_rbv(
        name="AutoSave",
        dtype=ChannelType.ENUM,
        enum_strings=("No", "Yes"),
        value="No",
        doc="Single mode: save every frame to its own file",
    )
    full_file_name = pvproperty(
        name="FullFileName_RBV",
        value="",
        max_length=1024,
        dtype=PvpropertyChar,
        string_encoding="utf-8",
        read_only=True,
        doc="Path of the file being or last written",
    )
    file_write_mode = pvproperty_with_rbv(
        name="FileWriteMode",
        dtype=ChannelType.ENUM,
        enum_strings=WRITE_MODES,
        value="Stream",
        doc="Single, Capture or Stream",
    )
    capture = pvproperty_with_rbv(
        name="Capture",
        dtype=ChannelType.ENUM,
        enum_strings=("Done", "Capture"),
        value="Done",
        put=_put_capture,
        doc="Open (1) or close (0) the capture file",
    )
    num_capture = pvproperty_with_rbv(
        name="NumCapture", value=0, doc="Frames to capture; 0 = until Capture=0"
    )
    num_captured = pvproperty(
        name="NumCaptured_RBV", value=0, read_only=True, doc="Frames captured so far"
    )
    write_status = pvproperty(
        name="WriteStatus",
        dtype=ChannelType.ENUM,
        enum_strings=("Write OK", "Write error"),
        value="Write OK",
        read_only=True,
        doc="Result of the last file operation",
    )
    write_message = pvproperty(
        name="WriteMessage",
        value="",
        max_length=256,
        dtype=PvpropertyChar,
        string_encoding="utf-8",
        read_only=True,
        doc="Error message of the last file operation",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._writer: HDF5FrameWriter | None = None
        self._buffer: list[tuple[np.ndarray, dict, int, float]] = []

    @property
    def detector(self) -> SimAreaDetector:
        """The owning detector group."""
        return self.parent

    @property
    def capturing(self) -> bool:
        """True between Capture=1 and the end of capture."""
        return self.capture.readback.value == "Capture"

    @num_captured.shutdown
    async def num_captured(self, instance, async_lib):
        """Close any open file when the server stops."""
        await self._finish_capture()

    async def file_path_put(self, value: str) -> str:
        """Normalise FilePath, create it if asked, and report whether it exists."""
        path = str(value)
        if path and not path.endswith("/"):
            path += "/"
        if path and int(self.create_directory.readback.value) != 0:
            try:
                Path(path).mkdir(parents=True, exist_ok=True)
            except OSError as ex:
                await self._report_error(f"Cannot create {path}: {ex}")
        exists = bool(path) and Path(path).is_dir()
        await self.file_path_exists.write("Yes" if exists else "No")
        await self.file_path.readback.write(path)
        return path

    def _full_file_name(self) -> str:
        return format_file_name(
            self.file_template.readback.value,
            self.file_path.readback.value,
            self.file_name.readback.value,
            int(self.file_number.readback.value),
        )

    async def _report_error(self, message: str) -> None:
        logger.error(message)
        await self.write_message.write(message[:255])
        await self.write_status.write("Write error")

    async def _next_file(self) -> HDF5FrameWriter:
        """Name the next file, publish FullFileName_RBV, and advance FileNumber."""
        name = self._full_file_name()
        await self.full_file_name.write(name)
        if self.auto_increment.readback.value == "Yes":
            number = int(self.file_number.readback.value) + 1
            await self.file_number.setpoint.write(number, verify_value=False)
            await self.file_number.readback.write(number)
        return HDF5FrameWriter(Path(name), self.detector.shape)

    async def capture_put(self, value) -> str:
        """Handle a Capture put: 1 opens a capture, 0 ends it and closes the file."""
        start = value in (1, "Capture")
        if not start:
            await self._finish_capture()
            return "Done"
        if self.capturing:
            return "Capture"
        if self.file_path_exists.value != "Yes":
            await self._report_error(f"FilePath {self.file_path.readback.value!r} does not exist")
            return "Done"
        await self.write_status.write("Write OK")
        await self.write_message.write("")
        await self.num_captured.write(0)
        self._buffer = []
        mode = self.file_write_mode.readback.value
        if mode in ("Stream", "Capture"):
            self._writer = await self._next_file()
        await self.capture.readback.write("Capture")
        return "Capture"

    async def _finish_capture(self) -> None:
        writer, self._writer = self._writer, None
        buffer, self._buffer = self._buffer, []
        try:
            if writer is not None:
                for frame, attrs, uid, ts in buffer:
                    await asyncio.to_thread(writer.write, frame, attrs, uid, ts)
                await asyncio.to_thread(writer.close)
        except Exception as ex:
            await self._report_error(f"Closing capture failed: {ex}")
        if self.capturing:
            await self.capture.readback.write("Done")
            await self.capture.setpoint.write("Done", verify_value=False)

    async def process(self, frame: np.ndarray, attrs: dict, unique_id: int, ts: float):
        """Write one received frame (before the acquisition completes); pass it on."""
        await self._store(frame, attrs, unique_id, ts)
        return frame

    async def _store(self, frame: np.ndarray, attrs: dict, unique_id: int, ts: float) -> None:
        mode = self.file_write_mode.readback.value
        if mode == "Single" and self.auto_save.readback.value == "Yes":
            writer = await self._next_file()
            await asyncio.to_thread(_write_and_close, writer, frame, attrs, unique_id, ts)
            return
        if not self.capturing:
            return
        try:
            if mode == "Stream" and self._writer is not None:
                await asyncio.to_thread(self._writer.write, frame, attrs, unique_id, ts)
            elif mode == "Capture":
                self._buffer.append((frame, attrs, unique_id, ts))
        except Exception as ex:
            await self._report_error(f"Writing frame failed: {ex}")
            await self._finish_capture()
            return
        captured = int(self.num_captured.value) + 1
        await self.num_captured.write(captured)
        target = int(self.num_capture.readback.value)
        if target > 0 and captured >= target:
            await self._finish_capture()


def _write_and_close(writer: HDF5FrameWriter, frame, attrs, unique_id, ts) -> None:
    writer.write(frame, attrs, unique_id, ts)
    writer.close()


class SimAreaDetector(PVGroup):
    """A camera: driver ``{prefix}cam1:``, HDF5 plugin ``{prefix}HDF1:``, and ADCore's
    ``image1:``, ``ROI1:``-``ROI4:``, ``Stats1:``-``Stats5:`` plugins.

    See :class:`CamGroup`, :class:`HDF5PluginGroup` and :mod:`sim_devices.ad_plugins`
    for the PVs.

    Parameters
    ----------
    prefix : str
        Detector prefix, e.g. ``DEMO:`` (PVs ``DEMO:cam1:...``, ``DEMO:HDF1:...``).
    scene : callable
        ``scene(ctx: FrameContext)`` returning a (ny, nx) array, or
        ``(array, {name: value})`` for per-frame attributes.
    shape : tuple of int
        (ny, nx) of every frame.
    ioc : object, optional
        Passed to the scene as ``ctx.ioc`` (the instrument IOC holding the state).
    seed : int, optional
        Seed of the noise generator.
    start_trigger : async callable, optional
        ``await start_trigger()`` returns the monotonic time of the instrument's next
        start pulse; with ``TriggerMode`` External the first exposure starts then.
    time_scale : float
        Wall s per instrument s of AcquireTime/Period (the scene gets AcquireTime).
    acquire_guard : async callable, optional
        Awaited with the detector before an acquisition; raises RefusedError to refuse.
    """

    cam = SubGroup(CamGroup, prefix="cam1:", doc="Detector driver")
    hdf = SubGroup(HDF5PluginGroup, prefix="HDF1:", doc="HDF5 file plugin")
    # ADCore's commonPlugins.cmd set, which facility profiles name: all fed from CAM1
    # and disabled at start (a disabled plugin costs nothing per frame).
    image1 = SubGroup(ImagePluginGroup, prefix="image1:", doc="Last frame for viewers")
    roi1 = SubGroup(ROIPluginGroup, prefix="ROI1:", doc="Region of interest 1")
    roi2 = SubGroup(ROIPluginGroup, prefix="ROI2:", doc="Region of interest 2")
    roi3 = SubGroup(ROIPluginGroup, prefix="ROI3:", doc="Region of interest 3")
    roi4 = SubGroup(ROIPluginGroup, prefix="ROI4:", doc="Region of interest 4")
    stats1 = SubGroup(StatsPluginGroup, prefix="Stats1:", doc="Statistics 1")
    stats2 = SubGroup(StatsPluginGroup, prefix="Stats2:", doc="Statistics 2")
    stats3 = SubGroup(StatsPluginGroup, prefix="Stats3:", doc="Statistics 3")
    stats4 = SubGroup(StatsPluginGroup, prefix="Stats4:", doc="Statistics 4")
    stats5 = SubGroup(StatsPluginGroup, prefix="Stats5:", doc="Statistics 5")

    def __init__(
        self,
        *args,
        scene: Scene,
        shape: tuple[int, int] = (64, 64),
        ioc: Any = None,
        seed: int | None = None,
        start_trigger: Callable[[], Awaitable[float]] | None = None,
        time_scale: float = 1.0,
        acquire_guard: Callable[[Any], Awaitable[None]] | None = None,
        **kwargs,
    ):
        self.scene, self.time_scale, self.acquire_guard = scene, float(time_scale), acquire_guard
        self.start_trigger = start_trigger
        self.shape = (int(shape[0]), int(shape[1]))
        self.ioc = ioc
        self.rng = np.random.default_rng(seed)
        super().__init__(*args, **kwargs)

    def render(self, ctx: FrameContext) -> tuple[np.ndarray, dict]:
        """Call the scene and normalise its output."""
        return normalize_scene_output(self.scene(ctx), self.shape)

    @property
    def plugins(self) -> tuple[PluginBaseGroup, ...]:
        """The plugins, in the order a frame visits those of one source port."""
        return (self.hdf, self.image1, self.roi1, self.roi2, self.roi3, self.roi4,
                self.stats1, self.stats2, self.stats3, self.stats4, self.stats5)  # fmt: skip

    async def publish(
        self, port: str, frame: np.ndarray, attrs: dict, unique_id: int, ts: float
    ) -> None:
        """Hand a frame from asyn port ``port`` to every plugin whose NDArrayPort names it."""
        for plugin in self.plugins:
            if plugin.source_port == port:
                await plugin.on_frame(frame, attrs, unique_id, ts)

    async def process_frame(self, ctx: FrameContext) -> None:
        """Render one frame (in a worker thread) and hand it to the plugins."""
        frame, attrs = await asyncio.to_thread(self.render, ctx)
        if self.cam.array_callbacks.readback.value == "Enable":
            await self.publish(self.cam.port_name.value, frame, attrs, ctx.frame_index,
                               ctx.timestamp)  # fmt: skip
