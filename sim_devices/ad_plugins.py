"""ADCore plugins of the simulated cameras: the NDPluginBase PVs, image, statistics, ROI.

The record types are ADCore's, so ophyd's stock ``PluginBase`` subclasses work
unchanged: ``PortName_RBV``, ``PluginType_RBV``, ``NDArrayPort``/``_RBV`` and the
version strings are string records (DBR_STRING; a CHAR waveform reads as an array and
ophyd's port check fails with "unhashable type: numpy.ndarray"), long texts
(``NDAttributesFile``) CHAR waveforms.

Port chaining: every plugin receives the frames its ``NDArrayPort`` names (``CAM1``,
the driver, or another plugin's ``PortName_RBV``: ``HDF1``, ``IMAGE1``, ``ROI1``,
``STATS1`` ..., the upper-cased plugin prefix) and passes its output on under its
own port: ROI its sub-array, the others the frame they received. A plugin does
nothing while ``EnableCallbacks`` is Disable (the default of every plugin but
``HDF1:``), so a disabled plugin costs nothing per frame. Every enabled plugin is done
with a frame before the driver's acquisition completes (callbacks always block), so
statistics read after a ``SingleTrigger`` trigger belong to its frame.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import numpy as np
from caproto import ChannelType
from caproto.server import PvpropertyChar, get_pv_pair_wrapper, pvproperty

from sim_devices.ad_records import PluginRecords, ROIRecords, StatsRecords

__all__ = [
    "ADCORE_VERSION",
    "DATA_TYPES",
    "ImagePluginGroup",
    "MAX_IMAGE_PIXELS",
    "PluginBaseGroup",
    "ROIPluginGroup",
    "StatsPluginGroup",
    "frame_statistics",
    "string_pv",
]

logger = logging.getLogger(__name__)

pvproperty_with_rbv = get_pv_pair_wrapper(setpoint_suffix="", readback_suffix="_RBV")

#: The ADCore release whose record types the simulated cameras serve.
ADCORE_VERSION = "3.12.1"
DATA_TYPES = ("Int8", "UInt8", "Int16", "UInt16", "Int32", "UInt32", "Float32", "Float64")
#: Pixels of ``image1:ArrayData``: a CA array's length is fixed when the IOC starts; the
#: largest simulated sensor (the XRM's 2048 x 2048 unbinned) fits.
MAX_IMAGE_PIXELS = 2048 * 2048


def string_pv(name: str, value: str, doc: str, **kwargs) -> pvproperty:
    """A read-only string record (stringin: DBR_STRING, up to 40 characters)."""
    return pvproperty(
        name=name, value=value, dtype=ChannelType.STRING, read_only=True, doc=doc, **kwargs
    )


def _enum_rbv(name: str, strings: tuple[str, ...], value: str, doc: str, **kwargs):
    return pvproperty_with_rbv(
        name=name, dtype=ChannelType.ENUM, enum_strings=strings, value=value, doc=doc, **kwargs
    )


def _long_ro(name: str, doc: str, value: int = 0) -> pvproperty:
    return pvproperty(name=name, value=value, read_only=True, doc=doc)


def _double_ro(name: str, doc: str) -> pvproperty:
    return pvproperty(name=name, value=0.0, read_only=True, precision=4, doc=doc)


async def _put_port(obj, instance, value):
    # The readback follows the setpoint (stringout -> stringin).
    await obj.readback.write(str(value))
    return str(value)


class PluginBaseGroup(PluginRecords):
    """The NDPluginBase (and NDArrayBase) records every plugin has.

    PVs
    ---
    ``EnableCallbacks``/``_RBV`` (Disable/Enable), ``BlockingCallbacks``/``_RBV``
    (No/Yes; frames are processed before the acquisition completes either way),
    ``NDArrayPort``/``_RBV`` (string: source port), ``NDArrayAddress``/``_RBV``,
    ``PortName_RBV``, ``PluginType_RBV``, ``ADCoreVersion_RBV``, ``DriverVersion_RBV``
    (strings), ``ArrayCounter``/``_RBV``, ``ArraySize0_RBV``/``1``/``2`` (received
    frame), ``NDimensions_RBV``, ``DataType_RBV``, ``ColorMode_RBV``, ``UniqueId_RBV``,
    ``TimeStamp_RBV``, ``DroppedArrays``/``_RBV``, ``QueueSize``, ``QueueFree``,
    ``MinCallbackTime``/``_RBV``, ``ExecutionTime_RBV`` (ms), ``NDAttributesFile``; the
    rest of ophyd's ``PluginBase`` PVs from :class:`sim_devices.ad_records.PluginRecords`
    (accepted; ``ArrayRate_RBV``, ``Dimensions_RBV``, ``Dim0SA``/``Dim1SA`` true).
    """

    #: PluginType_RBV of the class (ADCore's C++ class name).
    PLUGIN_TYPE = "NDPluginDriver"
    #: EnableCallbacks when the IOC starts.
    ENABLED_AT_START = False

    enable = _enum_rbv("EnableCallbacks", ("Disable", "Enable"), "Disable", "Process frames")
    blocking_callbacks = _enum_rbv(
        "BlockingCallbacks", ("No", "Yes"), "Yes", "Frames are processed before Acquire ends"
    )
    nd_array_port = pvproperty_with_rbv(
        name="NDArrayPort", value="CAM1", dtype=ChannelType.STRING, put=_put_port,
        doc="Source asyn port of frames",
    )  # fmt: skip
    nd_array_address = pvproperty_with_rbv(
        name="NDArrayAddress", value=0, doc="Source address (0 only)"
    )
    port_name = string_pv("PortName_RBV", "", "asyn port")
    plugin_type = string_pv("PluginType_RBV", "", "Plugin type")
    core_version = string_pv("ADCoreVersion_RBV", ADCORE_VERSION, "ADCore version")
    driver_version = string_pv("DriverVersion_RBV", ADCORE_VERSION, "Plugin version")
    array_counter = pvproperty_with_rbv(name="ArrayCounter", value=0, doc="Frames received")
    array_size0 = _long_ro("ArraySize0_RBV", "Received frame dim 0 (x)")
    array_size1 = _long_ro("ArraySize1_RBV", "Received frame dim 1 (y)")
    array_size2 = _long_ro("ArraySize2_RBV", "Received frame dim 2")
    ndimensions = _long_ro("NDimensions_RBV", "Received frame rank", 2)
    data_type = pvproperty(
        name="DataType_RBV", dtype=ChannelType.ENUM, enum_strings=DATA_TYPES, value="UInt16",
        read_only=True, doc="Pixel type of received frames",
    )  # fmt: skip
    color_mode = pvproperty(
        name="ColorMode_RBV", dtype=ChannelType.ENUM, enum_strings=("Mono",), value="Mono",
        read_only=True, doc="Colour mode of received frames",
    )  # fmt: skip
    unique_id = _long_ro("UniqueId_RBV", "UniqueId of the last frame")
    time_stamp = _double_ro("TimeStamp_RBV", "Time stamp of the last frame (s)")
    dropped_arrays = pvproperty_with_rbv(name="DroppedArrays", value=0, doc="Frames dropped")
    queue_size = pvproperty(name="QueueSize", value=20, doc="Input queue length")
    queue_free = _long_ro("QueueFree", "Free queue places", 20)
    min_callback_time = pvproperty_with_rbv(
        name="MinCallbackTime", value=0.0, doc="Minimum time between frames (s; not applied)"
    )
    execution_time = _double_ro("ExecutionTime_RBV", "Time to process the last frame (ms)")
    nd_attributes_file = pvproperty(
        name="NDAttributesFile", value="", max_length=256, dtype=PvpropertyChar,
        string_encoding="utf-8", doc="Attributes file (not read)",
    )  # fmt: skip

    @property
    def detector(self) -> Any:
        """The owning camera (:class:`sim_devices.areadetector.SimAreaDetector`)."""
        return self.parent

    @property
    def port(self) -> str:
        """This plugin's asyn port: its prefix's last part, upper-cased (``ROI1``)."""
        return self.prefix.rstrip(":").rsplit(":", 1)[-1].upper()

    @property
    def source_port(self) -> str:
        """The port whose frames this plugin receives."""
        return str(self.nd_array_port.readback.value)

    @property
    def enabled(self) -> bool:
        """True while EnableCallbacks is Enable."""
        return self.enable.readback.value == "Enable"

    @port_name.startup
    async def port_name(self, instance, async_lib):
        """Publish the port and type, and prime the sizes (ophyd refuses unprimed plugins)."""
        await self.port_name.write(self.port)
        await self.plugin_type.write(self.PLUGIN_TYPE)
        if self.ENABLED_AT_START:
            await self.enable.setpoint.write("Enable", verify_value=False)
            await self.enable.readback.write("Enable")
        await self.publish_shape(self.detector.shape)

    async def publish_shape(self, shape: tuple[int, int]) -> None:
        """Show frames of ``shape`` (ny, nx) in the received-size records."""
        ny, nx = int(shape[0]), int(shape[1])
        await self.array_size0.write(nx)
        await self.array_size1.write(ny)
        await self.dimensions_rbv.write([nx, ny])
        await self.dim0_sa.write(nx)
        await self.dim1_sa.write(ny)

    async def on_frame(self, frame: np.ndarray, attrs: dict, unique_id: int, ts: float) -> None:
        """Receive one frame from the source port; process it and pass the output on.

        A chain cannot loop: each plugin has one source, so plugins on a loop of ports
        are never reached from the driver's.
        """
        if not self.enabled:
            return
        started = time.perf_counter()
        count = int(self.array_counter.readback.value) + 1
        await self.array_counter.setpoint.write(count, verify_value=False)
        await self.array_counter.readback.write(count)
        if frame.shape != (self.array_size1.value, self.array_size0.value):
            await self.publish_shape(frame.shape)
        await self.unique_id.write(int(unique_id))
        await self.time_stamp.write(float(ts))
        output = await self.process(frame, attrs, unique_id, ts)
        await self.execution_time.write(1e3 * (time.perf_counter() - started))
        if output is not None:
            await self.detector.publish(self.port, output, attrs, unique_id, ts)

    async def process(self, frame: np.ndarray, attrs: dict, unique_id: int, ts: float):
        """Handle one frame; return the array passed on to plugins chained behind."""
        return frame


class ImagePluginGroup(PluginBaseGroup):
    """NDStdArrays (``image1:``): the last frame as a waveform, for viewers.

    PVs
    ---
    As :class:`PluginBaseGroup`, plus ``ArrayData`` (the last received frame, row-major,
    ``ArraySize0_RBV`` x ``ArraySize1_RBV`` elements of DBR_SHORT: the uint16 pixels'
    bits as int16, as ADCore serves a UInt16 camera; a client views them back as
    uint16). Updated only while the plugin is enabled.
    """

    PLUGIN_TYPE = "NDPluginStdArrays"

    array_data = pvproperty(
        name="ArrayData", dtype=ChannelType.INT, value=[0], max_length=MAX_IMAGE_PIXELS,
        read_only=True, doc="The last frame (int16 view of uint16 pixels)",
    )  # fmt: skip

    async def process(self, frame, attrs, unique_id, ts):
        """Publish the frame in ArrayData."""
        if frame.size > MAX_IMAGE_PIXELS:
            logger.error("image1: a %s frame exceeds ArrayData's %d pixels", frame.shape,
                         MAX_IMAGE_PIXELS)  # fmt: skip
        else:
            await self.array_data.write(np.ascontiguousarray(frame).view(np.int16).ravel())
        return frame


def frame_statistics(
    frame: np.ndarray, basic: bool = True, centroid_threshold: float | None = None
) -> dict[str, float]:
    """NDPluginStats' statistics of ``frame``, keyed by the records' attribute names.

    ``basic``: minimum, maximum (and the first such pixel's position in row-major
    order), mean, sigma (the population standard deviation, as ADCore's), total, net.
    ``centroid_threshold`` (None: none): the centroid, widths and x-y correlation of
    the pixels at or above it.
    """
    ny, nx = frame.shape
    stats: dict[str, float] = {}
    if basic:
        imin, imax = int(np.argmin(frame)), int(np.argmax(frame))
        total, variance = _moments(frame)
        stats = {
            "min_value": float(frame.flat[imin]), "max_value": float(frame.flat[imax]),
            "min_x": imin % nx, "min_y": imin // nx, "max_x": imax % nx, "max_y": imax // nx,
            "mean_value": total / frame.size, "total": total, "net": total,
            "sigma": math.sqrt(max(0.0, variance)),
        }  # fmt: skip
    if centroid_threshold is not None:
        pixels = frame.astype(np.float64, copy=False)
        weights = np.where(pixels >= centroid_threshold, pixels, 0.0)
        weight = float(weights.sum())
        stats["centroid_total"] = weight
        if weight > 0:
            row, col = weights.sum(axis=1), weights.sum(axis=0)
            y, x = np.arange(ny, dtype=np.float64), np.arange(nx, dtype=np.float64)
            cx, cy = float(col @ x) / weight, float(row @ y) / weight
            sxx, syy = float(col @ (x - cx) ** 2) / weight, float(row @ (y - cy) ** 2) / weight
            sxy = float((y - cy) @ weights @ (x - cx)) / weight
            spread = math.sqrt(sxx * syy)
            stats.update({
                "centroid_x": cx, "centroid_y": cy, "sigma_x": math.sqrt(sxx),
                "sigma_y": math.sqrt(syy), "sigma_xy": sxy / spread if spread > 0 else 0.0,
            })  # fmt: skip
    return stats


def _moments(frame: np.ndarray) -> tuple[float, float]:
    """(sum, population variance) of ``frame``'s pixels.

    Unsigned pixels of up to 16 bits are summed exactly in integers (their squares fit
    in uint32): half the time of a float64 copy on a 2048 x 2048 frame, and the
    variance is free of cancellation.
    """
    n = frame.size
    if frame.dtype.kind == "u" and frame.dtype.itemsize <= 2:
        wide = frame.astype(np.uint32)
        total = int(wide.sum(dtype=np.uint64))
        np.multiply(wide, wide, out=wide)
        squares = int(wide.sum(dtype=np.uint64))
        return float(total), (n * squares - total * total) / (n * n)
    pixels = frame.astype(np.float64, copy=False)
    return float(pixels.sum()), float(pixels.var())


class StatsPluginGroup(StatsRecords, PluginBaseGroup):
    """NDPluginStats (``Stats1:`` ...): statistics of each received frame.

    PVs
    ---
    As :class:`PluginBaseGroup`, plus ``ComputeStatistics``/``_RBV`` (No/Yes, Yes):
    ``MinValue_RBV``, ``MaxValue_RBV``, ``MinX_RBV``/``MinY_RBV``,
    ``MaxX_RBV``/``MaxY_RBV`` (first such pixel), ``MeanValue_RBV``, ``Sigma_RBV``
    (population), ``Total_RBV``, ``Net_RBV`` (= Total: ``BgdWidth``/``_RBV`` is
    accepted, no background is subtracted); ``ComputeCentroid``/``_RBV`` (No):
    ``CentroidThreshold``/``_RBV``, ``CentroidX_RBV``/``Y``, ``SigmaX_RBV``/``Y``,
    ``SigmaXY_RBV`` (correlation), ``CentroidTotal_RBV``; ``ComputeProfiles``/``_RBV``,
    ``ComputeHistogram``/``_RBV``, ``HistSize``/``_RBV``, ``HistMin``/``_RBV``,
    ``HistMax``/``_RBV``, ``HistEntropy_RBV``, ``TSControl``, ``TSNumPoints``
    (accepted, not computed); the cursor, profile, histogram and time-series records of
    :class:`sim_devices.ad_records.StatsRecords` (accepted, not computed). Statistics
    are computed in a worker thread.
    """

    PLUGIN_TYPE = "NDPluginStats"

    compute_statistics = _enum_rbv("ComputeStatistics", ("No", "Yes"), "Yes", "Basic stats")
    compute_centroid = _enum_rbv("ComputeCentroid", ("No", "Yes"), "No", "Centroid, sigmas")
    compute_profiles = _enum_rbv("ComputeProfiles", ("No", "Yes"), "No", "Not computed")
    compute_histogram = _enum_rbv("ComputeHistogram", ("No", "Yes"), "No", "Not computed")
    bgd_width = pvproperty_with_rbv(name="BgdWidth", value=0, doc="Accepted; no background")
    centroid_threshold = pvproperty_with_rbv(
        name="CentroidThreshold", value=0.0, doc="Pixels below do not count in the centroid"
    )
    hist_size = pvproperty_with_rbv(name="HistSize", value=256, doc="Not computed")
    hist_min = pvproperty_with_rbv(name="HistMin", value=0.0, doc="Not computed")
    hist_max = pvproperty_with_rbv(name="HistMax", value=65535.0, doc="Not computed")
    hist_entropy = _double_ro("HistEntropy_RBV", "Not computed (0)")
    ts_control = pvproperty(
        name="TSControl", dtype=ChannelType.ENUM, enum_strings=("Erase/Start", "Start",
        "Stop", "Read"), value="Stop", doc="Time series (not simulated)",
    )  # fmt: skip
    ts_num_points = pvproperty(name="TSNumPoints", value=2048, doc="Not simulated")
    min_value = _double_ro("MinValue_RBV", "Minimum")
    max_value = _double_ro("MaxValue_RBV", "Maximum")
    min_x = _long_ro("MinX_RBV", "x of the minimum")
    min_y = _long_ro("MinY_RBV", "y of the minimum")
    max_x = _long_ro("MaxX_RBV", "x of the maximum")
    max_y = _long_ro("MaxY_RBV", "y of the maximum")
    mean_value = _double_ro("MeanValue_RBV", "Mean")
    sigma = _double_ro("Sigma_RBV", "Standard deviation (population)")
    total = _double_ro("Total_RBV", "Sum of the pixels")
    net = _double_ro("Net_RBV", "Total less background (no background: Total)")
    centroid_x = _double_ro("CentroidX_RBV", "Centroid x (px)")
    centroid_y = _double_ro("CentroidY_RBV", "Centroid y (px)")
    sigma_x = _double_ro("SigmaX_RBV", "Width in x (px)")
    sigma_y = _double_ro("SigmaY_RBV", "Width in y (px)")
    sigma_xy = _double_ro("SigmaXY_RBV", "x-y correlation")
    centroid_total = _double_ro("CentroidTotal_RBV", "Sum above the threshold")

    async def process(self, frame, attrs, unique_id, ts):
        """Compute the enabled statistics and publish them."""
        basic = self.compute_statistics.readback.value == "Yes"
        centroid = self.compute_centroid.readback.value == "Yes"
        if basic or centroid:
            threshold = float(self.centroid_threshold.readback.value) if centroid else None
            stats = await asyncio.to_thread(frame_statistics, frame, basic, threshold)
            for attr, value in stats.items():
                await getattr(self, attr).write(value)
        return frame


class ROIPluginGroup(ROIRecords, PluginBaseGroup):
    """NDPluginROI (``ROI1:`` ...): a region of each frame, binned and reversed as asked.

    PVs
    ---
    As :class:`PluginBaseGroup`, plus for X and Y: ``MinX``/``_RBV``, ``SizeX``/``_RBV``
    (0 or beyond the frame: to its edge), ``BinX``/``_RBV`` (summed, clipped to
    uint16), ``ReverseX``/``_RBV``, ``EnableX``/``_RBV`` (Disable: the whole axis),
    ``AutoSizeX``/``_RBV`` (Enable: size to the edge), ``MaxSizeX_RBV`` (received
    size); ``ArraySizeX_RBV``/``Y``/``Z`` (the output), ``MinZ``/``SizeZ``/``BinZ``/
    ``ReverseZ``/``EnableZ``/``AutoSizeZ`` (+``_RBV``; frames are 2-D: accepted),
    ``MaxSizeZ_RBV``, ``Name``/``_RBV``, ``DataTypeOut``/``_RBV`` (Automatic: the
    input type), ``EnableScale``/``_RBV``, ``Scale``/``_RBV`` (accepted, not applied);
    ``MaxX``, ``MaxY``, ``SetXHOPR``, ``SetYHOPR``
    (:class:`sim_devices.ad_records.ROIRecords`, accepted).
    """

    PLUGIN_TYPE = "NDPluginROI"

    name_ = pvproperty_with_rbv(name="Name", value="", dtype=ChannelType.STRING, doc="ROI name")
    data_type_out = _enum_rbv(
        "DataTypeOut", ("Automatic", *DATA_TYPES), "Automatic", "Output type (input type)"
    )
    enable_scale = _enum_rbv("EnableScale", ("Disable", "Enable"), "Disable", "Not applied")
    scale = pvproperty_with_rbv(name="Scale", value=1.0, doc="Not applied")
    array_size_x = _long_ro("ArraySizeX_RBV", "Output width")
    array_size_y = _long_ro("ArraySizeY_RBV", "Output height")
    array_size_z = _long_ro("ArraySizeZ_RBV", "Output depth (0: 2-D)")
    max_size_x = _long_ro("MaxSizeX_RBV", "Received width")
    max_size_y = _long_ro("MaxSizeY_RBV", "Received height")
    max_size_z = _long_ro("MaxSizeZ_RBV", "Received depth")
    min_x = pvproperty_with_rbv(name="MinX", value=0, doc="First column")
    min_y = pvproperty_with_rbv(name="MinY", value=0, doc="First row")
    min_z = pvproperty_with_rbv(name="MinZ", value=0, doc="Accepted (2-D frames)")
    size_x = pvproperty_with_rbv(name="SizeX", value=0, doc="Columns (0: to the edge)")
    size_y = pvproperty_with_rbv(name="SizeY", value=0, doc="Rows (0: to the edge)")
    size_z = pvproperty_with_rbv(name="SizeZ", value=0, doc="Accepted (2-D frames)")
    bin_x = pvproperty_with_rbv(name="BinX", value=1, doc="Columns summed per output column")
    bin_y = pvproperty_with_rbv(name="BinY", value=1, doc="Rows summed per output row")
    bin_z = pvproperty_with_rbv(name="BinZ", value=1, doc="Accepted (2-D frames)")
    reverse_x = _enum_rbv("ReverseX", ("No", "Yes"), "No", "Mirror columns")
    reverse_y = _enum_rbv("ReverseY", ("No", "Yes"), "No", "Mirror rows")
    reverse_z = _enum_rbv("ReverseZ", ("No", "Yes"), "No", "Accepted (2-D frames)")
    enable_x = _enum_rbv("EnableX", ("Disable", "Enable"), "Enable", "Disable: all columns")
    enable_y = _enum_rbv("EnableY", ("Disable", "Enable"), "Enable", "Disable: all rows")
    enable_z = _enum_rbv("EnableZ", ("Disable", "Enable"), "Enable", "Accepted (2-D frames)")
    auto_size_x = _enum_rbv("AutoSizeX", ("Disable", "Enable"), "Disable", "Size to the edge")
    auto_size_y = _enum_rbv("AutoSizeY", ("Disable", "Enable"), "Disable", "Size to the edge")
    auto_size_z = _enum_rbv("AutoSizeZ", ("Disable", "Enable"), "Disable", "Accepted")

    def _axis(self, axis: str, length: int) -> tuple[int, int, int, bool]:
        """(start, size, bin, reverse) of ``axis`` clamped to a received ``length``."""

        def rbv(name):
            return getattr(self, f"{name}_{axis}").readback.value

        if rbv("enable") != "Enable":
            return 0, length, 1, False
        start = min(max(0, int(rbv("min"))), length - 1)
        size = int(rbv("size"))
        if size <= 0 or rbv("auto_size") == "Enable" or start + size > length:
            size = length - start
        binning = min(max(1, int(rbv("bin"))), size)
        return start, size - size % binning, binning, rbv("reverse") == "Yes"

    async def publish_shape(self, shape):
        """Show the received size (and the output it gives) in the size records."""
        await super().publish_shape(shape)
        await self.max_size_x.write(int(shape[1]))
        await self.max_size_y.write(int(shape[0]))

    async def process(self, frame, attrs, unique_id, ts):
        """Cut, bin and mirror the region; publish its size; pass it on."""
        ny, nx = frame.shape
        x0, sx, bx, rx = self._axis("x", nx)
        y0, sy, by, ry = self._axis("y", ny)
        out = frame[y0 : y0 + sy, x0 : x0 + sx]
        if bx > 1 or by > 1:
            summed = out.reshape(sy // by, by, sx // bx, bx).sum(axis=(1, 3), dtype=np.int64)
            out = np.clip(summed, 0, np.iinfo(frame.dtype).max).astype(frame.dtype)
        if rx:
            out = out[:, ::-1]
        if ry:
            out = out[::-1, :]
        out = np.ascontiguousarray(out)
        await self.array_size_x.write(out.shape[1])
        await self.array_size_y.write(out.shape[0])
        return out
