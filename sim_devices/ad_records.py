"""ADCore records the simulated cameras serve so that every PV of ophyd's stock classes is.

ophyd's ``AreaDetectorCam``, ``HDF5Plugin``, ``StatsPlugin``, ``ROIPlugin`` and
``ImagePlugin`` (ophyd 1.11) name some 580 PVs; a profile that connects them all
(``det.wait_for_connection(all_signals=True)``) waits forever on one that is not
served. Most of them configure things the simulation does not model (shutter
wiring, temperature, compression, time series). They are served here with ADCore's
record types and defaults, *accepted, not simulated*: a setpoint's ``_RBV`` mirrors
what was put, and nothing reads them back into the camera's behaviour. The few
that are cheap to make true are: ``ArrayRate_RBV`` (frames per second over the last
second, as ADCore's 1 s calc record), a plugin's ``Dimensions_RBV`` and ``Dim0SA``/
``Dim1SA`` (the received frame's size, when it changes), nothing per frame.

Each group of records is a table of ``(name, kind, access, default, doc)`` rows
turned into pvproperties on a mixin ``PVGroup`` that the camera's groups inherit
(:func:`record_group`):

kind
    ``long``, ``double``, ``string`` (stringin/out, DBR_STRING), ``text`` (CHAR
    waveform, ophyd's ``string=True``), ``enum:A/B/...`` (bo/bi, mbbo/mbbi),
    ``longs:N`` / ``doubles:N`` (waveforms of at most N elements).
access
    ``ro`` (read-only), ``rw`` (one writable record), ``pair`` (the setpoint and its
    ``_RBV`` readback, ophyd's ``EpicsSignalWithRBV``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

from caproto import ChannelType
from caproto.server import PVGroup, PvpropertyChar, get_pv_pair_wrapper, pvproperty

__all__ = [
    "CAM_RECORDS",
    "HDF5_RECORDS",
    "NDARRAY_BASE_RECORDS",
    "PLUGIN_RECORDS",
    "ROI_RECORDS",
    "STATS_RECORDS",
    "CamRecords",
    "HDF5Records",
    "NDArrayBaseRecords",
    "PluginRecords",
    "ROIRecords",
    "StatsRecords",
    "record_group",
    "record_pv_names",
]

pvproperty_with_rbv = get_pv_pair_wrapper(setpoint_suffix="", readback_suffix="_RBV")

#: Elements of the profile, histogram and time-series waveforms (ADCore's defaults are
#: the frame size, HistSize and TSNumPoints; the values are not computed, so kept small).
PROFILE_POINTS = 2048
HIST_POINTS = 256
TS_POINTS = 2048
OPEN_CLOSE = "enum:Close/Open"
NO_YES = "enum:No/Yes"

# Records of ADCore's NDArrayBase.template that the driver and every plugin have.
NDARRAY_BASE_RECORDS = (
    ("AsynIO", "string", "rw", "", "asyn record (accepted)"),
    ("PoolMaxBuffers", "long", "ro", 0, "NDArray pool: buffer limit (0: none)"),
    ("PoolAllocBuffers", "long", "ro", 2, "NDArray pool: buffers allocated"),
    ("PoolFreeBuffers", "long", "ro", 2, "NDArray pool: buffers free"),
    ("PoolUsedBuffers", "double", "ro", 0.0, "NDArray pool: buffers in use"),
    ("PoolMaxMem", "double", "ro", 0.0, "NDArray pool: memory limit (MB; 0: none)"),
    ("PoolUsedMem", "double", "ro", 0.0, "NDArray pool: memory in use (MB)"),
)
CAM_RECORDS = (
    ("NDAttributesFile", "text", "rw", "", "Attributes file (not read)"),
    ("ArraySizeZ_RBV", "long", "ro", 0, "Frame depth (0: 2-D)"),
    ("BinX", "long", "pair", 1, "Binning (accepted)"),
    ("BinY", "long", "pair", 1, "Binning (accepted)"),
    ("MinX", "long", "pair", 0, "Region start (accepted)"),
    ("MinY", "long", "pair", 0, "Region start (accepted)"),
    ("ReverseX", NO_YES, "pair", "No", "Mirror (accepted)"),
    ("ReverseY", NO_YES, "pair", "No", "Mirror (accepted)"),
    ("FrameType", "enum:Normal/Background/FlatField", "pair", "Normal", "Frame type"),
    ("Gain", "double", "pair", 1.0, "Gain (accepted)"),
    ("NumExposuresCounter_RBV", "long", "ro", 0, "Exposures of this frame"),
    ("ReadStatus", "enum:Done/Read", "rw", "Done", "Read the status (nothing to read)"),
    ("ShutterMode", "enum:None/EPICS PV/Detector output", "pair", "None", "Shutter mode"),
    ("ShutterControl", OPEN_CLOSE, "pair", "Close", "Detector shutter (accepted)"),
    ("ShutterControlEPICS", OPEN_CLOSE, "rw", "Close", "EPICS shutter (accepted)"),
    ("ShutterOpenEPICS", "double", "rw", 1.0, "Value put to open the EPICS shutter"),
    ("ShutterCloseEPICS", "double", "rw", 0.0, "Value put to close the EPICS shutter"),
    ("ShutterFanout", "long", "rw", 0, "fanout record (accepted)"),
    ("ShutterOpenDelay", "double", "pair", 0.0, "Shutter open delay (s)"),
    ("ShutterCloseDelay", "double", "pair", 0.0, "Shutter close delay (s)"),
    ("ShutterStatus_RBV", "enum:Closed/Open", "ro", "Closed", "Detector shutter status"),
    ("ShutterStatusEPICS_RBV", "enum:Closed/Open", "ro", "Closed", "EPICS shutter status"),
    ("StringFromServer_RBV", "text", "ro", "", "Last reply of a serial camera (none)"),
    ("StringToServer_RBV", "text", "ro", "", "Last command to a serial camera (none)"),
    ("Temperature", "double", "pair", 25.0, "Sensor temperature setpoint (C)"),
    ("TemperatureActual", "double", "rw", 25.0, "Sensor temperature (C; constant)"),
)
# NDPluginBase.template (the QueueUse calcs: levels of QueueSize 20's alarms).
PLUGIN_RECORDS = (
    ("BayerPattern_RBV", "enum:RGGB/GBRG/GRBG/BGGR", "ro", "RGGB", "Bayer pattern (Mono)"),
    ("Dimensions_RBV", "longs:10", "ro", [0, 0], "Received frame's dimensions (x, y)"),
    ("Dim0SA", "long", "rw", 0, "Received frame's dimension 0 (x)"),
    ("Dim1SA", "long", "rw", 0, "Received frame's dimension 1 (y)"),
    ("Dim2SA", "long", "rw", 0, "Received frame's dimension 2 (0: 2-D)"),
    ("QueueUse", "double", "rw", 0.0, "Queue places in use (callbacks block: 0)"),
    ("QueueUseHIGH", "double", "rw", 15.0, "QueueUse alarm level (75 %)"),
    ("QueueUseHIHI", "double", "rw", 18.0, "QueueUse alarm level (90 %)"),
    ("QueueFreeLow", "double", "rw", 5.0, "QueueFree alarm level (25 %)"),
)
ROI_RECORDS = (
    ("MaxX", "long", "rw", 0, "Accepted"),
    ("MaxY", "long", "rw", 0, "Accepted"),
    ("SetXHOPR", "double", "rw", 0.0, "Display limit of the x records (accepted)"),
    ("SetYHOPR", "double", "rw", 0.0, "Display limit of the y records (accepted)"),
)
_TS_ARRAYS = ("MinValue", "MinX", "MinY", "MaxValue", "MaxX", "MaxY", "MeanValue", "Sigma",
              "Total", "Net", "CentroidX", "CentroidY", "SigmaX", "SigmaY", "SigmaXY")  # fmt: skip
_PROFILES = ("Average", "Centroid", "Cursor", "Threshold")
STATS_RECORDS = (
    ("SetXHOPR", "double", "rw", 0.0, "Display limit of the x records (accepted)"),
    ("SetYHOPR", "double", "rw", 0.0, "Display limit of the y records (accepted)"),
    ("MaxSizeX", "long", "rw", 0, "Accepted"),
    ("MaxSizeY", "long", "rw", 0, "Accepted"),
    ("CursorX", "long", "pair", 256, "Cursor column of the cursor profile"),
    ("CursorY", "long", "pair", 256, "Cursor row of the cursor profile"),
    ("Histogram_RBV", f"doubles:{HIST_POINTS}", "ro", [0.0], "Histogram (not computed)"),
    ("ProfileSizeX_RBV", "long", "ro", 0, "Profile length (not computed)"),
    ("ProfileSizeY_RBV", "long", "ro", 0, "Profile length (not computed)"),
    *((f"Profile{kind}{axis}_RBV", f"doubles:{PROFILE_POINTS}", "ro", [0.0],
       "Profile (not computed)") for kind in _PROFILES for axis in "XY"),
    ("TSAcquiring", "enum:Done/Acquiring", "rw", "Done", "Time series running (never)"),
    ("TSCurrentPoint", "long", "rw", 0, "Time-series points so far"),
    ("TSRead", "enum:Done/Read", "rw", "Done", "Read the time series"),
    *((f"TS{name}", f"doubles:{TS_POINTS}", "ro", [0.0], "Time series (not simulated)")
      for name in _TS_ARRAYS),
)  # fmt: skip
# NDFile.template and NDFileHDF5.template.
HDF5_RECORDS = (
    ("FileFormat", "enum:HDF5/Invalid", "pair", "HDF5", "File format"),
    ("FileNumber_Sync", "long", "rw", 0, "autosave helper of FileNumber (accepted)"),
    ("FileNumber_write", "long", "rw", 0, "autosave helper of FileNumber (accepted)"),
    ("DeleteDriverFile", NO_YES, "pair", "No", "Delete the driver's file (none)"),
    ("ReadFile", "enum:Done/Read", "pair", "Done", "Read a file (accepted)"),
    ("WriteFile", "enum:Done/Write", "pair", "Done", "Write the buffer (accepted)"),
    ("NumRowChunks", "long", "pair", 0, "Chunking (files: one frame per chunk)"),
    ("NumColChunks", "long", "pair", 0, "Chunking (files: one frame per chunk)"),
    ("NumFramesChunks", "long", "pair", 0, "Chunking (files: one frame per chunk)"),
    ("BoundaryAlign", "long", "pair", 0, "Chunk alignment (bytes; accepted)"),
    ("BoundaryThreshold", "long", "pair", 1, "Alignment threshold (bytes; accepted)"),
    ("NumExtraDims", "long", "pair", 0, "Extra dimensions (files are (n, y, x))"),
    ("ExtraDimSizeN", "long", "pair", 1, "Extra dimension size (accepted)"),
    ("ExtraDimSizeX", "long", "pair", 1, "Extra dimension size (accepted)"),
    ("ExtraDimSizeY", "long", "pair", 1, "Extra dimension size (accepted)"),
    ("ExtraDimNameN_RBV", "string", "ro", "", "Extra dimension name"),
    ("ExtraDimNameX_RBV", "string", "ro", "", "Extra dimension name"),
    ("ExtraDimNameY_RBV", "string", "ro", "", "Extra dimension name"),
    ("StoreAttr", NO_YES, "pair", "Yes", "Store NDAttributes (always stored)"),
    ("StorePerform", NO_YES, "pair", "No", "Store performance data (none)"),
    ("RunTime", "double", "ro", 0.0, "Time of the last file (s; not measured)"),
    ("IOSpeed", "double", "ro", 0.0, "Write speed (Mbit/s; not measured)"),
    ("NumFramesFlush", "long", "pair", 0, "Flush period (every frame is flushed)"),
    ("Compression", "enum:None/N-bit/szip/zlib", "pair", "None", "Filter (files: None)"),
    ("NumDataBits", "long", "pair", 0, "N-bit filter (accepted)"),
    ("DataBitsOffset", "long", "pair", 0, "N-bit filter (accepted)"),
    ("SZipNumPixels", "long", "pair", 16, "szip filter (accepted)"),
    ("ZLevel", "long", "pair", 6, "zlib filter (accepted)"),
)


def _attribute(name: str) -> str:
    """The Python attribute of record ``name`` (``ArrayRate_RBV`` -> ``array_rate_rbv``)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _record(name: str, kind: str, access: str, default, doc: str):
    """One pvproperty (or setpoint/readback pair) of a table row."""
    kwargs: dict = {"name": name, "doc": doc}
    if kind == "long":
        kwargs.update(dtype=ChannelType.LONG, value=int(default))
    elif kind == "double":
        kwargs.update(dtype=ChannelType.DOUBLE, value=float(default), precision=3)
    elif kind == "string":
        kwargs.update(dtype=ChannelType.STRING, value=str(default))
    elif kind == "text":
        kwargs.update(dtype=PvpropertyChar, value=str(default), max_length=256,
                      string_encoding="utf-8")  # fmt: skip
    elif kind.startswith("enum:"):
        kwargs.update(dtype=ChannelType.ENUM, enum_strings=tuple(kind[5:].split("/")),
                      value=default)  # fmt: skip
    elif kind.startswith(("longs:", "doubles:")):
        element, size = kind.split(":")
        dtype = ChannelType.LONG if element == "longs" else ChannelType.DOUBLE
        kwargs.update(dtype=dtype, value=list(default), max_length=int(size))
    else:
        raise ValueError(f"unknown record kind {kind!r} of {name}")
    if access == "pair":
        return pvproperty_with_rbv(**kwargs)
    if access not in ("ro", "rw"):
        raise ValueError(f"unknown access {access!r} of {name}")
    return pvproperty(read_only=access == "ro", **kwargs)


def record_group(name: str, rows: Iterable[tuple], doc: str, base: type = PVGroup) -> type:
    """A ``PVGroup`` subclass serving the records of ``rows`` (see the module docstring)."""
    namespace: dict = {"__doc__": doc, "__module__": __name__}
    for row in rows:
        attribute = _attribute(row[0])
        if attribute in namespace:
            raise ValueError(f"record {row[0]} twice in {name}")
        namespace[attribute] = _record(*row)
    return type(base)(name, (base,), namespace)


def record_pv_names(rows: Iterable[tuple]) -> list[str]:
    """The PV names the records of ``rows`` serve (a pair: setpoint and ``_RBV``)."""
    names = []
    for name, _, access, _, _ in rows:
        names += [name, name + "_RBV"] if access == "pair" else [name]
    return names


_NDArrayBaseTable = record_group(
    "_NDArrayBaseTable", NDARRAY_BASE_RECORDS, "NDArrayBase records (accepted)."
)


class NDArrayBaseRecords(_NDArrayBaseTable):
    """ADCore's NDArrayBase records of the driver and every plugin (accepted), and the
    frame rate ``ArrayRate_RBV``: the ArrayCounter's increase over the last second,
    updated each second as ADCore's calc record (nothing per frame).

    The concrete group has an ``array_counter`` setpoint/readback pair.
    """

    array_rate = pvproperty(
        name="ArrayRate_RBV", value=0.0, precision=2, read_only=True,
        doc="Frames per second over the last second",
    )  # fmt: skip

    @array_rate.scan(period=1.0)
    async def array_rate(self, instance, async_lib):
        """Publish the ArrayCounter's rate of increase (0 after a reset)."""
        now, count = time.monotonic(), int(self.array_counter.readback.value)
        last = getattr(self, "_rate_origin", None)
        self._rate_origin = (now, count)
        if last is None:
            return
        rate = max(0, count - last[1]) / max(now - last[0], 1e-3)
        if abs(rate - instance.value) > 1e-9:
            await instance.write(rate)


CamRecords = record_group(
    "CamRecords", CAM_RECORDS, "ADBase records of the driver (accepted).", NDArrayBaseRecords
)
PluginRecords = record_group(
    "PluginRecords", PLUGIN_RECORDS, "NDPluginBase records (accepted).", NDArrayBaseRecords
)
ROIRecords = record_group("ROIRecords", ROI_RECORDS, "NDROI records (accepted).")
StatsRecords = record_group("StatsRecords", STATS_RECORDS, "NDStats records (accepted).")
HDF5Records = record_group("HDF5Records", HDF5_RECORDS, "NDFileHDF5 records (accepted).")
