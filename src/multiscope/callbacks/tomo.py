"""Tomography callbacks: a live preview during the scan, a full reconstruction at its end.

Both consume the documents of a tomography run (``plan_name`` ``tomo_scan`` or
``fly_tomo_scan``): streams ``dark``, ``flat`` and ``primary`` whose camera frames
are file-referenced (the data key with ``external == "STREAM:"`` and 3 dims,
``[frames, ny, nx]``; :mod:`multiscope.callbacks.frames`). The rotation angle of
each frame is the per-frame attribute ``theta`` in the HDF5 file when the IOC
records it (fly scans), else the ``sample_theta`` reading of the primary event.

:class:`LiveTomoPreview`
    Updates a few slices (default rows at 25/50/75 % of the height) by filtered
    back projection as each projection arrives: ~1-5 ms per 512 x 512 projection,
    well inside the 50 ms of a 20 Hz fly scan (``bench/live.py``).
:class:`TomoReconstructor`
    At a successful stop: normalise, ``-log``, :func:`~multiscope.analysis.tomo.find_center`,
    :func:`~multiscope.analysis.tomo.reconstruct` (gridrec); writes
    ``<output_dir>/<raw uid>/recon.h5`` (+ TIFF on request) and a PNG of the
    central slice, then publishes a derived run (``plan_name: "tomo_reconstruction"``)
    through ``publish(name, doc)``, e.g. the catalog writer.

Both keep per-run state and reset it at each ``start``, so they may be subscribed
directly (one run at a time) or built per run by a :class:`event_model.RunRouter`
with :func:`tomo_factory`. Wrap the reconstructor in
:class:`~multiscope.callbacks.background.BackgroundCallback` so that it never
blocks the RunEngine.

Derived run of :class:`TomoReconstructor`
-----------------------------------------
``start``
    ``plan_name="tomo_reconstruction"``, ``derived_from=<raw uid>``, ``sample_id``,
    the raw ``tomo`` and ``mosaic`` blocks, ``parameters`` (``center_px``,
    ``center_method``, ``algorithm``, ``filter_name``, ``pixel_size_um``,
    ``num_projections``, ``angle_source``, ``flat_normalisation``),
    ``software`` (package versions), ``analysis_functions`` (qualified names),
    ``figures`` (PNG paths), ``files`` (``volume``, optional ``tiff``).
``descriptor`` ``primary``
    ``volume``: ``external="STREAM:"``, float32, shape ``[1, z, y, x]``;
    scalars ``center_px``, ``axis_offset_px``, ``slice_entropy``,
    ``noise_sigma``, ``contrast_to_noise``.
``stream_resource``
    ``application/x-hdf5``, ``uri=file://localhost<recon.h5>``,
    ``parameters={"dataset": "/entry/data/data", "chunk_shape": [1, z, y, x]}``.
``stream_datum``
    ``indices={"start": 0, "stop": 1}``, ``seq_nums={"start": 1, "stop": 2}``.
``event`` (seq_num 1) with the scalars, then ``stop`` (``success``).
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path

import h5py
import numba
import numpy as np
import scipy.fft
from event_model import DocumentRouter, compose_run

from multiscope.analysis.tomo import find_center, minus_log, normalize, reconstruct
from multiscope.callbacks.frames import FrameReader, stream_data_key

__all__ = [
    "ANGLE_KEY",
    "THETA_ATTRIBUTE",
    "TOMO_PLANS",
    "LiveTomoPreview",
    "TomoReconstructor",
    "derived_run_documents",
    "json_safe",
    "qualified_name",
    "slice_figure",
    "slice_quality",
    "software_versions",
    "tomo_factory",
    "warm_up",
    "write_tiff",
    "write_volume",
]

logger = logging.getLogger(__name__)

TOMO_PLANS = ("tomo_scan", "fly_tomo_scan")
ANGLE_KEY = "sample_theta"
THETA_ATTRIBUTE = "theta"
VOLUME_DATASET = "/entry/data/data"
HDF5_MIMETYPE = "application/x-hdf5"


def tomo_factory(callback_class: type, **kwargs) -> Callable:
    """A :class:`event_model.RunRouter` factory giving each tomography run a fresh callback.

    Parameters
    ----------
    callback_class : type
        :class:`LiveTomoPreview` or :class:`TomoReconstructor` (or a subclass).
    **kwargs
        Passed to the class for every run.

    Examples
    --------
    >>> from event_model import RunRouter
    >>> router = RunRouter([tomo_factory(LiveTomoPreview)])  # doctest: +SKIP
    """

    def factory(name, start_doc):
        if start_doc.get("plan_name") in TOMO_PLANS:
            return [callback_class(**kwargs)], []
        return [], []

    return factory


def software_versions() -> dict[str, str]:
    """Versions of the packages a reconstruction depends on (for provenance)."""
    out = {"python": platform.python_version()}
    for dist in (
        "multiscope",
        "numpy",
        "scipy",
        "scikit-image",
        "finufft",
        "numba",
        "h5py",
        "event-model",
        "matplotlib",
    ):
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out


def qualified_name(func) -> str:
    return f"{func.__module__}.{func.__qualname__}"


def json_safe(value):
    """JSON-friendly copy of metadata (numpy scalars/arrays to Python)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# ------------------------------------------------------------------------------ base


class _TomoRun(DocumentRouter):
    """Bookkeeping shared by the tomography callbacks: run, streams, camera key, files."""

    def __init__(self, *, reader_timeout: float = 2.0) -> None:
        super().__init__()
        self._reader_timeout = reader_timeout
        self.frames = FrameReader(timeout=reader_timeout)
        self._reset()

    def _reset(self) -> None:
        self.active = False
        self.start_doc: dict | None = None
        self.tomo_md: dict = {}
        self.camera_key: str | None = None
        self.frame_shape: tuple[int, int] | None = None
        self._stream_of_descriptor: dict[str, str] = {}
        self._angle_in_events = False

    # -- documents ---------------------------------------------------------------------
    def start(self, doc):
        self.frames.close()
        self._reset()
        self.active = doc.get("plan_name") in TOMO_PLANS
        if not self.active:
            return
        self.start_doc = doc
        self.tomo_md = dict(doc.get("tomo") or {})
        self.run_started()

    def descriptor(self, doc):
        if not self.active:
            return
        self.frames.add_descriptor(doc)
        self._stream_of_descriptor[doc["uid"]] = doc["name"]
        key = stream_data_key(doc, ndim=3)
        if key is not None and self.camera_key in (None, key):
            self.camera_key = key
            shape = doc["data_keys"][key]["shape"]
            self.frame_shape = (int(shape[-2]), int(shape[-1]))
        if doc["name"] == "primary" and ANGLE_KEY in doc["data_keys"]:
            self._angle_in_events = True
        self.described(doc)

    def stream_resource(self, doc):
        if self.active:
            self.frames.add_resource(doc)

    def stream_datum(self, doc):
        if not self.active:
            return
        stream = self._stream_of_descriptor.get(doc.get("descriptor", ""))
        if self.frames.resource_of(doc).data_key != self.camera_key:
            return
        self.frames_referenced(stream, doc)

    def event_page(self, doc):
        if not self.active:
            return
        stream = self._stream_of_descriptor.get(doc["descriptor"])
        if stream == "primary" and ANGLE_KEY in doc["data"]:
            for seq, theta in zip(doc["seq_num"], doc["data"][ANGLE_KEY], strict=True):
                self.angle_read(int(seq), float(theta))

    def stop(self, doc):
        if not self.active:
            return
        try:
            self.run_stopped(doc)
        finally:
            self.frames.close()
            self.active = False

    # -- hooks for subclasses ------------------------------------------------------------
    def run_started(self) -> None:
        """A tomography run started (``self.start_doc`` is set)."""

    def described(self, doc: dict) -> None:
        """A descriptor of the run arrived."""

    def frames_referenced(self, stream: str | None, datum: dict) -> None:
        """A ``stream_datum`` of the camera arrived."""

    def angle_read(self, seq_num: int, theta_deg: float) -> None:
        """A primary event carried the rotation angle of ``seq_num``."""

    def run_stopped(self, doc: dict) -> None:
        """The run's stop document arrived."""


# ------------------------------------------------------------------------------ live


def _ramp_filter(n_pad: int, filter_name: str) -> np.ndarray:
    """Real-FFT filter of length ``n_pad // 2 + 1`` (Kak & Slaney eq. 61, as iradon).

    Built from the band-limited spatial ramp so the DC term is right (no offset),
    the same construction as :func:`multiscope.analysis.tomo.reconstruct`.
    """
    dist = np.minimum(np.arange(n_pad), n_pad - np.arange(n_pad))
    kernel = np.zeros(n_pad)
    kernel[0] = 0.25
    odd = dist % 2 == 1
    kernel[odd] = -1.0 / (np.pi * dist[odd]) ** 2
    filt = 2.0 * np.real(np.fft.rfft(kernel))
    freq = np.fft.rfftfreq(n_pad)  # cycles per pixel, 0..0.5
    if filter_name in ("shepp", "shepp-logan"):
        omega = np.pi * freq[1:]
        filt[1:] *= np.sin(omega) / omega
    elif filter_name in ("hann", "hanning"):
        filt *= 0.5 + 0.5 * np.cos(2 * np.pi * freq)
    elif filter_name not in ("ramp", "ramlak"):
        raise ValueError(f"unknown filter_name {filter_name!r} (ramp, shepp or hann)")
    return filt.astype(np.float32)


@numba.njit(parallel=True, fastmath=True, cache=True)
def _backproject_add(acc, filtered, cos_t, sin_t, center):  # pragma: no cover - numba
    # acc: (slices, n, n) running sums; filtered: (slices, length) one filtered row each.
    # Pixel (i, j) sees detector position s = (j - h) cos - (i - h) sin + center.
    n_sl, n, _ = acc.shape
    length = filtered.shape[1]
    half = n // 2
    for i in numba.prange(n):
        base = center - (i - half) * sin_t
        for b in range(n_sl):
            for j in range(n):
                s = base + (j - half) * cos_t
                k = int(math.floor(s))
                if k < 0 or k >= length - 1:
                    continue
                w1 = np.float32(s - k)
                acc[b, i, j] += filtered[b, k] + w1 * (filtered[b, k + 1] - filtered[b, k])


class _FieldSet:
    """The latest complete set of dark or flat frames (rows of interest), averaged.

    Consecutive frames of one stream form a set. A set is complete (sealed) when
    it holds the number of frames the plan announced (``tomo.num_flats`` /
    ``num_darks``), when a frame of another stream arrives, or at the run's end;
    only then does it replace the previous set. Projections are never normalised
    by a partial set (one noisy frame would imprint on every slice).
    """

    def __init__(self, expected: int | None = None) -> None:
        self.expected = expected if expected and expected > 0 else None
        self.ready: np.ndarray | None = None
        self._sum: np.ndarray | None = None
        self._count = 0

    def add(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames, dtype=np.float64)
        if self._sum is None:
            self._sum = np.zeros(frames.shape[1:])
            self._count = 0
        self._sum += frames.sum(axis=0)
        self._count += frames.shape[0]
        if self.expected is not None and self._count >= self.expected:
            self.seal()

    def seal(self) -> None:
        if self._sum is not None:
            self.ready = (self._sum / self._count).astype(np.float32)
            self._sum = None


class LiveTomoPreview(_TomoRun):
    """Preview slices reconstructed incrementally while a tomography scan runs.

    Each projection is read from its HDF5 file (only the preview rows), flat-
    and dark-corrected with the latest flat and dark sets, converted to line
    integrals, ramp filtered and back projected into the preview slices, so the
    slices are a complete filtered back projection of every projection so far.
    Projections that arrive before both darks and flats are kept (their preview
    rows only) and processed once both exist.

    Parameters
    ----------
    rows : sequence of int, optional
        Detector rows to reconstruct. Default: ``row_fractions`` of the height.
    row_fractions : sequence of float, optional
        Fractions of the frame height for the default rows.
    center : float, optional
        Rotation-axis column (px). Default: the run's ``tomo.center_guess_px``,
        else the detector centre ``(nx - 1) / 2``.
    filter_name : {'shepp', 'ramp', 'hann'}, optional
        Reconstruction filter (``shepp`` as the full reconstruction's default).
    reader_timeout : float, optional
        Seconds to wait for frames the writer has not flushed yet.

    Attributes
    ----------
    slices : dict of int to ndarray
        Row -> current slice (float32, ``(nx, nx)``, attenuation per pixel as
        :func:`~multiscope.analysis.tomo.reconstruct`), centred on the axis.
    num_projections : int
        Projections back projected so far.
    center : float or None
        Rotation-axis column used for the current run.
    timings : list of float
        Seconds spent per processed projection (read excluded), for monitoring.

    Notes
    -----
    Values are scaled by ``pi / (2 n)`` for the ``n`` projections so far: exact
    for a finished 180 or 360 deg scan, an estimate before.
    """

    def __init__(
        self,
        rows: Sequence[int] | None = None,
        *,
        row_fractions: Sequence[float] = (0.25, 0.5, 0.75),
        center: float | None = None,
        filter_name: str = "shepp",
        reader_timeout: float = 2.0,
    ) -> None:
        self._rows_arg = None if rows is None else [int(r) for r in rows]
        self.row_fractions = tuple(row_fractions)
        self._center_arg = center
        self.filter_name = filter_name
        self._listeners: list[Callable] = []
        super().__init__(reader_timeout=reader_timeout)

    def _reset(self) -> None:
        super()._reset()
        self.rows: list[int] = []
        self.center: float | None = None
        self.num_projections = 0
        self.timings: list[float] = []
        self._acc: np.ndarray | None = None
        self._dark = _FieldSet()
        self._flat = _FieldSet()
        self._pending: list[tuple[np.ndarray, float]] = []
        self._awaiting_angle: dict[int, np.ndarray] = {}
        self._angles_seen: dict[int, float] = {}
        self._filt: np.ndarray | None = None

    def on_update(self, callback: Callable[[dict[int, np.ndarray], int], object]) -> None:
        """Call ``callback(slices, num_projections)`` after every projection."""
        self._listeners.append(callback)

    @property
    def slices(self) -> dict[int, np.ndarray]:
        if self._acc is None:
            return {}
        scale = np.float32(np.pi / (2 * max(self.num_projections, 1)))
        return {row: self._acc[b] * scale for b, row in enumerate(self.rows)}

    # -- geometry ------------------------------------------------------------------------
    def _setup(self) -> None:
        ny, nx = self.frame_shape
        if self._rows_arg is not None:
            rows = self._rows_arg
        else:
            rows = [min(ny - 1, max(0, int(round(f * ny)))) for f in self.row_fractions]
        self.rows = sorted(set(rows))
        guess = self.tomo_md.get("center_guess_px")
        if self._center_arg is not None:
            self.center = float(self._center_arg)
        elif guess is not None:
            self.center = float(guess)
        else:
            self.center = (nx - 1) / 2
        # Zero-pad so every slice pixel (corners, off-centre axis) projects inside the
        # filtered row; FFT length >= 2x that so the convolution is not circular.
        reach = nx / math.sqrt(2) + 2
        self._left = max(0, math.ceil(reach - self.center))
        right = max(0, math.ceil(self.center + reach - (nx - 1)))
        self._length = self._left + nx + right
        self._n_pad = scipy.fft.next_fast_len(max(64, 2 * self._length))
        self._filt = _ramp_filter(self._n_pad, self.filter_name)
        self._acc = np.zeros((len(self.rows), nx, nx), np.float32)

    def run_started(self):
        # Sets are complete at the size the plan announces (if it does).
        self._dark = _FieldSet(self.tomo_md.get("num_darks"))
        self._flat = _FieldSet(self.tomo_md.get("num_flats"))

    def described(self, doc):
        if self.frame_shape is not None and self._acc is None:
            self._setup()

    # -- data ----------------------------------------------------------------------------
    def frames_referenced(self, stream, datum):
        if self._acc is None:
            return
        want = (THETA_ATTRIBUTE,) if stream == "primary" else ()
        block = self.frames.read(datum, rows=self.rows, attributes=want)
        # A frame of another stream completes the current dark or flat set.
        if stream != "dark":
            self._dark.seal()
        if stream != "flat":
            self._flat.seal()
        if stream == "dark":
            self._dark.add(block.data)
        elif stream == "flat":
            self._flat.add(block.data)
        elif stream == "primary":
            self._queue_projections(block)
        self._catch_up()

    def _queue_projections(self, block) -> None:
        data = block.data
        theta = block.attributes.get(THETA_ATTRIBUTE)
        if theta is not None:
            self._pending.extend(zip(data, theta.astype(float), strict=True))
            return
        # Angle from the primary event: it follows its stream_datum. Frames of one
        # event (multiplier > 1) share its angle.
        s0, s1 = block.seq_nums
        per_event = max(1, len(data) // max(1, s1 - s0))
        for k, seq in enumerate(range(s0, s1)):
            frames = data[k * per_event : (k + 1) * per_event]
            if seq in self._angles_seen:
                theta_deg = self._angles_seen.pop(seq)
                self._pending.extend((f, theta_deg) for f in frames)
            else:
                self._awaiting_angle[seq] = frames

    def angle_read(self, seq_num, theta_deg):
        frames = self._awaiting_angle.pop(seq_num, None)
        if frames is None:
            self._angles_seen[seq_num] = theta_deg
            return
        self._pending.extend((f, theta_deg) for f in frames)
        self._catch_up()

    def _fields(self):
        dark = self._dark.ready
        flat = self._flat.ready
        if dark is None and self.tomo_md.get("dark_policy") == "none":
            dark = np.zeros((len(self.rows), self.frame_shape[1]), np.float32)
        return dark, flat

    def _catch_up(self) -> None:
        dark, flat = self._fields()
        if dark is None or flat is None or not self._pending:
            return
        pending, self._pending = self._pending, []
        for raw, theta_deg in pending:
            self._add_projection(raw, theta_deg, flat, dark)

    def _add_projection(self, raw, theta_deg, flat, dark) -> None:
        t0 = time.perf_counter()
        line = minus_log(normalize(raw[None], flat, dark))[0]  # (slices, nx)
        buf = np.zeros((line.shape[0], self._n_pad), np.float32)
        buf[:, self._left : self._left + line.shape[1]] = line
        spec = scipy.fft.rfft(buf, axis=-1)
        spec *= self._filt
        filtered = scipy.fft.irfft(spec, n=self._n_pad, axis=-1)[:, : self._length]
        theta = math.radians(theta_deg)
        _backproject_add(
            self._acc,
            np.ascontiguousarray(filtered, dtype=np.float32),
            math.cos(theta),
            math.sin(theta),
            float(self.center + self._left),
        )
        self.num_projections += 1
        self.timings.append(time.perf_counter() - t0)
        if self._listeners:
            slices = self.slices
            for callback in self._listeners:
                callback(slices, self.num_projections)

    def run_stopped(self, doc):
        self._dark.seal()
        self._flat.seal()
        self._catch_up()
        if self._pending or self._awaiting_angle:
            logger.warning(
                "live preview: %d projections never processed (no %s)",
                len(self._pending) + len(self._awaiting_angle),
                "flats/darks" if self._pending else "angles",
            )


def warm_up() -> None:
    """Compile the preview's numba kernel now (it is cached on disk afterwards)."""
    acc = np.zeros((1, 4, 4), np.float32)
    _backproject_add(acc, np.zeros((1, 8), np.float32), 1.0, 0.0, 3.5)


# ------------------------------------------------------------------------------ full


class TomoReconstructor(_TomoRun):
    """Reconstruct a tomography run at its stop and publish the result as a derived run.

    Parameters
    ----------
    output_dir : path-like
        Results go to ``<output_dir>/<raw uid>/``: ``recon.h5`` (``/entry/data/data``,
        float32, shape ``(1, z, y, x)``), ``recon.tif`` if ``tiff``, ``recon.png``.
    publish : callable, optional
        ``publish(name, doc)`` receives the derived run's documents (e.g. the
        catalog writer, or a fan-out to it and a
        :class:`~multiscope.callbacks.mosaic.MosaicStitcher`).
    algorithm : {'gridrec', 'fbp'}, optional
        Passed to :func:`~multiscope.analysis.tomo.reconstruct`.
    filter_name : str, optional
        Passed to :func:`~multiscope.analysis.tomo.reconstruct`.
    center : float, optional
        Fixed rotation-axis column; default: found by
        :func:`~multiscope.analysis.tomo.find_center`.
    tiff : bool, optional
        Also write a TIFF stack (ImageJ layout, via tifffile).
    reader_timeout : float, optional
        Seconds to wait for frames not yet flushed by the writer.

    Attributes
    ----------
    volume : ndarray or None
        Last reconstruction, float32 ``(z, y, x)``, attenuation per pixel.
    center : float or None
        Rotation-axis column used (px).
    uid : str or None
        Uid of the last derived run; ``raw_uid`` the run it was derived from.
    paths : dict of str to Path
        ``volume``, ``figure`` and (if written) ``tiff``.
    metrics : dict of str to float
        Quality figures published in the derived event.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        publish: Callable[[str, dict], object] | None = None,
        *,
        algorithm: str = "gridrec",
        filter_name: str = "shepp",
        center: float | None = None,
        tiff: bool = False,
        reader_timeout: float = 10.0,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.publish = publish
        self.algorithm = algorithm
        self.filter_name = filter_name
        self.fixed_center = center
        self.tiff = tiff
        self.volume: np.ndarray | None = None
        self.center: float | None = None
        self.uid: str | None = None
        self.raw_uid: str | None = None
        self.paths: dict[str, Path] = {}
        self.metrics: dict[str, float] = {}
        super().__init__(reader_timeout=reader_timeout)

    def _reset(self) -> None:
        super()._reset()
        self._datums: dict[str, list[dict]] = {"dark": [], "flat": [], "primary": []}
        # Projections acquired before each flat datum: consecutive flats form one set.
        self._flat_positions: list[int] = []
        self._event_angles: dict[int, float] = {}

    def frames_referenced(self, stream, datum):
        if stream not in self._datums:
            return
        self._datums[stream].append(datum)
        if stream == "flat":
            n_before = sum(_n_events(d) for d in self._datums["primary"])
            self._flat_positions.append(n_before)

    def angle_read(self, seq_num, theta_deg):
        self._event_angles[seq_num] = theta_deg

    def run_stopped(self, doc):
        if doc.get("exit_status") != "success":
            logger.info(
                "reconstruction skipped: run %s ended %s",
                self.start_doc["uid"],
                doc.get("exit_status"),
            )
            return
        if not self._datums["primary"]:
            logger.warning(
                "reconstruction skipped: run %s has no projections", self.start_doc["uid"]
            )
            return
        self.reconstruct_run()

    # -- the work ------------------------------------------------------------------------
    def _read_stream(self, stream: str, attributes=()):
        blocks = [self.frames.read(d, attributes=attributes) for d in self._datums[stream]]
        return blocks

    def _angles(self, blocks, n_frames) -> tuple[np.ndarray, str]:
        if all(THETA_ATTRIBUTE in b.attributes for b in blocks):
            theta = np.concatenate([b.attributes[THETA_ATTRIBUTE] for b in blocks])
            return np.deg2rad(theta.astype(np.float64)), "hdf5:" + THETA_ATTRIBUTE
        angles = []
        for b in blocks:
            s0, s1 = b.seq_nums
            per_event = max(1, len(b.data) // max(1, s1 - s0))
            for seq in range(s0, s1):
                if seq not in self._event_angles:
                    raise ValueError(f"no {ANGLE_KEY} for projection event {seq}")
                angles.extend([self._event_angles[seq]] * per_event)
        if len(angles) != n_frames:
            raise ValueError(f"{len(angles)} angles for {n_frames} projections")
        return np.deg2rad(np.asarray(angles, dtype=np.float64)), "event:" + ANGLE_KEY

    def _line_integrals(self, raw, darks, flat_sets):
        """Normalise and -log, each projection by the flat sets on either side of it."""
        n = raw.shape[0]
        out = np.empty(raw.shape, np.float32)
        positions = sorted(flat_sets)
        # Segments between consecutive flat sets use the mean of both (beam drift).
        bounds = sorted({0, n, *[p for p in positions if 0 < p < n]})
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            before = [p for p in positions if p <= a]
            after = [p for p in positions if p >= b]
            use = ([before[-1]] if before else []) + ([after[0]] if after else [])
            flats = np.concatenate([flat_sets[p] for p in use])
            for c in range(a, b, 32):  # chunks bound the float32 temporaries
                d = min(b, c + 32)
                out[c:d] = minus_log(normalize(raw[c:d], flats, darks))
        return out

    def reconstruct_run(self) -> None:
        """Read the run's frames, reconstruct, write the files and publish."""
        raw_uid = self.start_doc["uid"]
        t0 = time.perf_counter()
        proj_blocks = self._read_stream("primary", attributes=(THETA_ATTRIBUTE,))
        raw = np.concatenate([b.data for b in proj_blocks])
        angles, angle_source = self._angles(proj_blocks, raw.shape[0])
        dark_blocks = self._read_stream("dark")
        if dark_blocks:
            darks = np.concatenate([b.data for b in dark_blocks]).astype(np.float32)
        else:
            logger.warning("run %s has no darks: dark = 0", raw_uid)
            darks = np.zeros(raw.shape[1:], np.float32)
        flat_sets: dict[int, list[np.ndarray]] = {}
        for pos, block in zip(self._flat_positions, self._read_stream("flat"), strict=True):
            flat_sets.setdefault(pos, []).append(block.data)
        if flat_sets:
            flat_sets = {p: np.concatenate(v).astype(np.float32) for p, v in flat_sets.items()}
            flat_note = "mean of the flat sets before and after each projection"
        else:
            # Without flats, each pixel's brightest projection stands in for the beam.
            logger.warning("run %s has no flats: flat = per-pixel maximum", raw_uid)
            flat_sets = {0: raw.max(axis=0, keepdims=True).astype(np.float32)}
            flat_note = "no flats: per-pixel maximum over projections"
        proj = self._line_integrals(raw, darks, flat_sets)
        del raw
        t_read = time.perf_counter() - t0

        if self.fixed_center is not None:
            center, center_method = float(self.fixed_center), "given"
        else:
            rows = structured_rows(proj)
            center = find_center(proj, angles, rows=rows)
            center_method = f"{qualified_name(find_center)} on rows {rows}"
        t1 = time.perf_counter()
        volume = reconstruct(
            proj, angles, center=center, algorithm=self.algorithm, filter_name=self.filter_name
        )
        t_recon = time.perf_counter() - t1
        del proj
        nx = volume.shape[-1]
        self.volume, self.center, self.raw_uid = volume, center, raw_uid
        logger.info(
            "run %s reconstructed: %s, centre %.2f px, read %.1f s, recon %.1f s",
            raw_uid,
            volume.shape,
            center,
            t_read,
            t_recon,
        )

        pixel_um = self.tomo_md.get("pixel_size_um")
        run_dir = self.output_dir / raw_uid
        run_dir.mkdir(parents=True, exist_ok=True)
        self.paths = {"volume": run_dir / "recon.h5", "figure": run_dir / "recon.png"}
        attrs = {
            "center_px": center,
            "algorithm": self.algorithm,
            "filter_name": self.filter_name,
            "pixel_size_um": float(pixel_um) if pixel_um else float("nan"),
            "units": "attenuation per pixel",
            "derived_from": raw_uid,
        }
        write_volume(self.paths["volume"], volume, attrs, angles_rad=angles)
        if self.tiff:
            self.paths["tiff"] = run_dir / "recon.tif"
            write_tiff(self.paths["tiff"], volume, pixel_um)
        mid = volume.shape[0] // 2
        slice_figure(
            self.paths["figure"],
            volume[mid],
            pixel_um,
            title=f"{self.start_doc.get('sample_id') or raw_uid[:8]}: row {mid}, "
            f"centre {center:.2f} px",
        )
        self.metrics = {
            "center_px": float(center),
            "axis_offset_px": float(center - (nx - 1) / 2),
            **slice_quality(volume[mid]),
        }
        parameters = {
            "center_px": float(center),
            "center_method": center_method,
            "center_guess_px": self.tomo_md.get("center_guess_px"),
            "algorithm": self.algorithm,
            "filter_name": self.filter_name,
            "pixel_size_um": pixel_um,
            "num_projections": int(len(angles)),
            "angle_range_deg": float(np.rad2deg(np.ptp(angles))),
            "angle_source": angle_source,
            "flat_normalisation": flat_note,
            "num_darks": int(darks.shape[0]) if darks.ndim == 3 else 0,
            "num_flats": int(sum(v.shape[0] for v in flat_sets.values())),
            "read_s": round(t_read, 3),
            "reconstruct_s": round(t_recon, 3),
        }
        self.uid = self._publish(volume.shape, parameters)

    def _publish(self, shape, parameters) -> str:
        start = self.start_doc
        md = {
            "plan_name": "tomo_reconstruction",
            "derived_from": start["uid"],
            "sample_id": start.get("sample_id", self.tomo_md.get("sample_id", "")),
            "tomo": self.tomo_md,
            "parameters": parameters,
            "software": software_versions(),
            "analysis_functions": [
                qualified_name(f) for f in (normalize, minus_log, find_center, reconstruct)
            ],
            "figures": [str(self.paths["figure"])],
            "files": {k: str(v) for k, v in self.paths.items() if k != "figure"},
        }
        if "mosaic" in start:
            md["mosaic"] = start["mosaic"]
        scalars = {k: float(v) for k, v in self.metrics.items()}
        docs = derived_run_documents(
            json_safe(md),
            volume_path=self.paths["volume"],
            volume_shape=shape,
            scalars=scalars,
        )
        if self.publish is not None:
            for name, doc in docs:
                self.publish(name, doc)
        return docs[0][1]["uid"]


def structured_rows(proj: np.ndarray, count: int = 3, spacing: int = 3) -> list[int]:
    """Detector rows with the most structure, for :func:`find_center`.

    ``find_center`` scores trial centres by the sharpness of a few slices; rows
    through empty parts of the sample score nothing (its default, the middle
    rows, can miss the sample of a mosaic tile). The rows whose sinograms vary
    most are taken instead, at least ``spacing`` rows apart.
    """
    # Every 4th angle is plenty to rank rows and keeps this cheap on big scans.
    score = proj[::4].std(axis=(0, 2))
    rows: list[int] = []
    for r in np.argsort(score)[::-1]:
        if all(abs(int(r) - q) >= spacing for q in rows):
            rows.append(int(r))
        if len(rows) == count:
            break
    return sorted(rows)


def _n_events(datum: dict) -> int:
    seq = datum.get("seq_nums") or {}
    n = int(seq.get("stop", 0)) - int(seq.get("start", 0))
    return n if n > 0 else 1


# ------------------------------------------------------------------------------ outputs


def derived_run_documents(
    metadata: dict,
    *,
    volume_path: str | os.PathLike,
    volume_shape: Sequence[int],
    scalars: dict[str, float],
    arrays: dict[str, np.ndarray] | None = None,
    volume_key: str = "volume",
) -> list[tuple[str, dict]]:
    """Documents of a one-event derived run whose volume is referenced in an HDF5 file.

    Parameters
    ----------
    metadata : dict
        Start-document metadata (``plan_name``, ``derived_from``, ...); JSON-safe.
    volume_path : path-like
        HDF5 file holding the volume at ``/entry/data/data``, shape ``(1, z, y, x)``.
    volume_shape : sequence of int
        ``(z, y, x)``.
    scalars : dict of str to int or float
        Scalar data keys of the event (``dtype`` integer or number).
    arrays : dict of str to ndarray, optional
        Small array data keys of the event (sent inline).
    volume_key : str, optional
        Data key of the volume.

    Returns
    -------
    list of (name, doc)
        start, descriptor, stream_resource, stream_datum, event, stop.
    """
    arrays = {k: np.asarray(v) for k, v in (arrays or {}).items()}
    shape = [1, *(int(s) for s in volume_shape)]
    bundle = compose_run(metadata=metadata)
    data_keys = {
        volume_key: {
            "source": f"file:{os.fspath(volume_path)}",
            "dtype": "array",
            "dtype_numpy": np.dtype(np.float32).str,
            "shape": shape,
            "external": "STREAM:",
        }
    }
    for key, value in scalars.items():
        kind = "integer" if isinstance(value, int | np.integer) else "number"
        data_keys[key] = {"source": "derived", "dtype": kind, "shape": []}
    for key, value in arrays.items():
        data_keys[key] = {
            "source": "derived",
            "dtype": "array",
            "dtype_numpy": value.dtype.str,
            "shape": list(value.shape),
        }
    desc = bundle.compose_descriptor(
        name="primary",
        data_keys=data_keys,
        hints={"derived": {"fields": list(scalars)}},
    )
    resource = bundle.compose_stream_resource(
        mimetype=HDF5_MIMETYPE,
        uri=f"file://localhost{Path(volume_path).absolute()}",
        data_key=volume_key,
        parameters={"dataset": VOLUME_DATASET, "chunk_shape": shape},
    )
    datum = resource.compose_stream_datum(
        indices={"start": 0, "stop": 1},
        seq_nums={"start": 1, "stop": 2},
        descriptor=desc.descriptor_doc,
    )
    now = time.time()
    data = {
        **{k: int(v) if isinstance(v, int | np.integer) else float(v) for k, v in scalars.items()},
        **{k: v.tolist() for k, v in arrays.items()},
    }
    event = desc.compose_event(data=data, timestamps={k: now for k in data}, seq_num=1)
    stop = bundle.compose_stop(exit_status="success")
    return [
        ("start", bundle.start_doc),
        ("descriptor", desc.descriptor_doc),
        ("stream_resource", resource.stream_resource_doc),
        ("stream_datum", datum),
        ("event", event),
        ("stop", stop),
    ]


def write_volume(path, volume, attrs: dict, **extra) -> None:
    """Write ``volume`` (z, y, x) to ``path`` at ``/entry/data/data`` as ``(1, z, y, x)`` float32.

    Compressed losslessly (shuffle + gzip), one chunk per slice.

    The file is written under a temporary name and renamed, so a reader never
    sees a partial file. ``attrs`` go on the dataset; each ``extra`` array goes
    to ``/entry/reconstruction/<name>``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    z, y, x = volume.shape
    with h5py.File(tmp, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        ds = f.create_dataset(
            VOLUME_DATASET,
            data=np.asarray(volume, np.float32)[None],
            chunks=(1, 1, y, x),  # one slice per chunk: slice views read little
            # Lossless, so every score read back is unchanged: byte shuffle + gzip 1 took
            # a demo volume to 0.85 of its size at ~10 ms per 256 x 256 slice (issue 9).
            shuffle=True,
            compression="gzip",
            compression_opts=1,
        )
        for key, value in attrs.items():
            ds.attrs[key] = value
        group = entry.create_group("reconstruction")
        for key, value in extra.items():
            group.create_dataset(key, data=np.asarray(value))
    os.replace(tmp, path)


def write_tiff(path, volume, pixel_um=None) -> None:
    """Write a float32 TIFF stack (ImageJ layout; voxel size in um when known)."""
    import tifffile

    kwargs = {}
    if pixel_um:
        kwargs = {
            "resolution": (1.0 / pixel_um, 1.0 / pixel_um),
            "metadata": {"spacing": float(pixel_um), "unit": "um", "axes": "ZYX"},
        }
    else:
        kwargs = {"metadata": {"axes": "ZYX"}}
    tifffile.imwrite(path, np.asarray(volume, np.float32), imagej=True, **kwargs)


def nice_length(target: float) -> float:
    """The largest 1, 2 or 5 x 10^k not above ``target`` (scale-bar lengths)."""
    if target <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(target))
    for m in (5, 2, 1):
        if m * exp <= target:
            return m * exp
    return exp


def slice_figure(path, image, pixel_um=None, *, title="", dpi=110) -> None:
    """PNG of one slice with a scale bar and a colour bar (matplotlib, Agg, thread-safe).

    Values are shown per um (attenuation coefficient, 1/um) when the pixel
    size is known, per pixel otherwise.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    image = np.asarray(image, np.float32)
    if pixel_um:
        shown, unit_label, length_unit = image / pixel_um, "attenuation (1/um)", "um"
    else:
        shown, unit_label, length_unit = image, "attenuation (1/pixel)", "px"
    lo, hi = np.percentile(shown, [0.5, 99.5])
    fig = Figure(figsize=(5.6, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(shown, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    width = image.shape[1] * (pixel_um or 1.0)
    bar = nice_length(width / 5)
    ax.add_artist(
        AnchoredSizeBar(
            ax.transData,
            bar / (pixel_um or 1.0),
            f"{bar:g} {length_unit}",
            "lower right",
            pad=0.4,
            color="white",
            frameon=False,
            size_vertical=max(1.0, image.shape[0] / 150),
        )
    )
    fig.colorbar(im, ax=ax, label=unit_label, shrink=0.85)
    fig.savefig(path, dpi=dpi)


def slice_quality(image) -> dict[str, float]:
    """Reference-free quality figures of a reconstructed slice.

    Returns
    -------
    dict
        ``slice_entropy``: histogram entropy (nats, 128 bins over the 0.5-99.5
        percentile range widened by half its span; lower = sharper, the metric
        :func:`~multiscope.analysis.tomo.find_center` minimises);
        ``noise_sigma``: noise from the median absolute difference of
        horizontal neighbours (robust to edges), per pixel units;
        ``contrast_to_noise``: (99.5th - 0.5th percentile) / ``noise_sigma``.
    """
    img = np.asarray(image, np.float64)
    n = img.shape[-1]
    half, r = n // 2, int(0.45 * n)
    core = img[..., half - r : half + r, half - r : half + r]  # inside the field of view
    lo, hi = np.percentile(core, [0.5, 99.5])
    span = (hi - lo) or 1.0
    hist = np.histogram(core, bins=np.linspace(lo - 0.5 * span, hi + 0.5 * span, 129))[0]
    prob = hist[hist > 0] / hist.sum()
    diff = np.diff(core, axis=-1)
    # Neighbour differences of white noise have sigma*sqrt(2); MAD -> sigma via 1.4826.
    noise = 1.4826 * float(np.median(np.abs(diff - np.median(diff)))) / math.sqrt(2)
    return {
        "slice_entropy": float(-np.sum(prob * np.log(prob))),
        "noise_sigma": noise,
        "contrast_to_noise": float((hi - lo) / noise) if noise > 0 else float("inf"),
    }
