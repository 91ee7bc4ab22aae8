"""Tomography callbacks: a live preview during the scan, a full reconstruction at its end.

Both consume the documents of a tomography run (``plan_name`` ``tomo_scan``,
``fly_tomo_scan`` or the lab XRM's ``xrm_tomo_scan``): streams ``dark``, ``flat`` and
``primary`` whose camera frames are file-referenced (the data key with
``external == "STREAM:"`` and 3 dims, ``[frames, ny, nx]``;
:mod:`multiscope.frame_files`). The rotation angle of each frame is the per-frame
attribute ``theta`` in the HDF5 file when the IOC records it (fly scans), else the
``sample_theta`` reading of the primary event.

:class:`LiveTomoPreview`
    Updates a few slices (default rows at 25/50/75 % of the height) by filtered
    back projection as each projection arrives: ~1-5 ms per 512 x 512 projection,
    well inside the 50 ms of a 20 Hz fly scan (``bench/live.py``).
:class:`TomoReconstructor`
    At a successful stop: normalise, ``-log``, :func:`~multiscope.analysis.tomo.find_center`,
    :func:`~multiscope.analysis.tomo.reconstruct` (gridrec); writes
    ``<output_dir>/<raw uid>/recon.h5`` (+ TIFF on request) and a PNG of the
    central slice, then publishes a derived run (``plan_name: "tomo_reconstruction"``)
    through ``publish(name, doc)``, e.g. the catalog writer
    (:mod:`multiscope.callbacks.derived`).

Both are :class:`~multiscope.callbacks.runs.RunFrames` (the documents as frame
records, the ``tomo`` block as a :class:`~multiscope.contracts.TomoBlock`) and
keep per-run state, reset at each ``start``, so they may be subscribed
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
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numba
import numpy as np
import scipy.fft

from multiscope import compute
from multiscope.analysis.stripe import remove_stripe_offsets
from multiscope.analysis.tomo import (
    find_center,
    fourier_filter,
    minus_log,
    normalize,
    reconstruct,
)
from multiscope.callbacks.derived import (
    VOLUME_DATASET,
    derived_run_documents,
    provenance,
    publish_derived_run,
    qualified_name,
)
from multiscope.callbacks.runs import FrameRecord, RunFrames
from multiscope.contracts import TomoBlock

__all__ = [
    "ANGLE_KEY",
    "THETA_ATTRIBUTE",
    "TOMO_PLANS",
    "LiveTomoPreview",
    "TomoReconstructor",
    "derived_run_documents",
    "slice_figure",
    "slice_quality",
    "tomo_factory",
    "warm_up",
    "write_tiff",
    "write_volume",
]

logger = logging.getLogger(__name__)

TOMO_PLANS = ("tomo_scan", "fly_tomo_scan", "xrm_tomo_scan")
ANGLE_KEY = "sample_theta"
THETA_ATTRIBUTE = "theta"


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


# ------------------------------------------------------------------------------ base


class _TomoRun(RunFrames):
    """A tomography run's frames (:class:`~multiscope.callbacks.runs.RunFrames`) and ``tomo`` block.

    The angle of a projection is its file attribute ``theta`` (fly scans) when the
    file has it, else the ``sample_theta`` reading of its primary event.
    """

    plans = TOMO_PLANS
    angle_attribute = THETA_ATTRIBUTE

    def _reset(self) -> None:
        super()._reset()
        self.tomo = TomoBlock()
        self.tomo_md: dict = {}

    def run_started(self) -> None:
        self.tomo_md = dict(self.start_doc.get("tomo") or {})
        self.tomo = TomoBlock.from_md(self.tomo_md)

    def event_fields(self, stream: str) -> dict[str, str]:
        return {"angle_deg": ANGLE_KEY} if stream == "primary" else {}

    def read_options(self, stream: str) -> dict:
        return {"attributes": (THETA_ATTRIBUTE,)} if stream == "primary" else {}


# ------------------------------------------------------------------------------ live


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
        guess = self.tomo.center_guess_px
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
        # The filter of the full reconstruction, on the rfft's half spectrum.
        half = self._n_pad // 2 + 1
        self._filt = fourier_filter(self._n_pad, self.filter_name)[:half].astype(np.float32)
        self._acc = np.zeros((len(self.rows), nx, nx), np.float32)

    def run_started(self):
        super().run_started()
        # Sets are complete at the size the plan announces (if it does).
        self._dark = _FieldSet(self.tomo.num_darks)
        self._flat = _FieldSet(self.tomo.num_flats)

    def described(self, doc):
        if self.frame_shape is not None and self._acc is None:
            self._setup()

    def read_options(self, stream):
        # Only the preview rows of each frame: 3 rows, not the frame.
        return {**super().read_options(stream), "rows": self.rows}

    # -- data ----------------------------------------------------------------------------
    def frame_arrived(self, record: FrameRecord) -> None:
        if self._acc is None:
            return
        # A frame of another stream completes the current dark or flat set.
        if record.stream != "dark":
            self._dark.seal()
        if record.stream != "flat":
            self._flat.seal()
        if record.stream == "dark":
            self._dark.add(record.frame[None])
        elif record.stream == "flat":
            self._flat.add(record.frame[None])
        elif record.stream == "primary":
            self._pending.append((record.frame, record.angle_deg))

    def frames_done(self) -> None:
        self._catch_up()

    def _fields(self):
        dark = self._dark.ready
        flat = self._flat.ready
        if dark is None and self.tomo.dark_policy == "none":
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
        waiting = self.frames_waiting
        if self._pending or waiting:
            logger.warning(
                "live preview: %d projections never processed (no %s)",
                len(self._pending) + waiting,
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
    ring_removal : bool, optional
        Remove the columns' gain-error stripes (rings) before the centre is found:
        :func:`~multiscope.analysis.stripe.remove_stripe_offsets`. Off by default.
    dask_scheduler : str, optional
        Address of a ``dask.distributed`` scheduler to reconstruct on (slab by
        slab, :func:`multiscope.compute.reconstruct_array`); default
        ``$MULTISCOPE_DASK_SCHEDULER`` if set, else this machine's threads;
        ``""``: this machine whatever is configured. Settable between runs.

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
        ring_removal: bool = False,
        dask_scheduler: str | None = None,
    ) -> None:
        self.ring_removal = ring_removal
        self.dask_scheduler = dask_scheduler
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
        # Frames are read at the stop, from closed files.
        super().__init__(reader_timeout=reader_timeout, read_live=False)

    def _reset(self) -> None:
        super()._reset()
        # Projections acquired before each flat datum: consecutive flats form one set.
        self._flat_positions: list[int] = []
        self._primary_events = 0

    def datum_referenced(self, stream, datum):
        if stream == "flat":
            self._flat_positions.append(self._primary_events)
        elif stream == "primary":
            self._primary_events += _n_events(datum)

    def run_stopped(self, doc):
        if doc.get("exit_status") != "success":
            logger.info(
                "reconstruction skipped: run %s ended %s",
                self.start_doc["uid"],
                doc.get("exit_status"),
            )
            return
        if not self.datums["primary"]:
            logger.warning(
                "reconstruction skipped: run %s has no projections", self.start_doc["uid"]
            )
            return
        self.reconstruct_run()

    # -- the work ------------------------------------------------------------------------
    def _stack(self, stream: str) -> tuple[np.ndarray | None, list[FrameRecord]]:
        """A stream's frames as one array (None without frames) and their records."""
        records = self.read_records(stream)
        if not records:
            return None, records
        return np.stack([r.frame for r in records]), records

    @staticmethod
    def _angles(records: list[FrameRecord]) -> tuple[np.ndarray, str]:
        """Projection angles (rad) and where they came from (one source for all)."""
        sources = {r.angle_source for r in records}
        if None in sources or len(sources) != 1:
            missing = next((r.seq_num for r in records if r.angle_deg is None), None)
            if missing is not None:
                raise ValueError(f"no {ANGLE_KEY} for projection event {missing}")
            raise ValueError(f"projection angles from several sources: {sorted(sources)}")
        theta = np.asarray([r.angle_deg for r in records], dtype=np.float64)
        return np.deg2rad(theta), sources.pop()

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
        raw, proj_records = self._stack("primary")
        angles, angle_source = self._angles(proj_records)
        del proj_records
        darks, _ = self._stack("dark")
        if darks is not None:
            darks = darks.astype(np.float32)
        else:
            logger.warning("run %s has no darks: dark = 0", raw_uid)
            darks = np.zeros(raw.shape[1:], np.float32)
        flat_sets: dict[int, list[np.ndarray]] = {}
        for record in self.read_records("flat"):
            flat_sets.setdefault(self._flat_positions[record.datum], []).append(record.frame)
        if flat_sets:
            flat_sets = {p: np.stack(v).astype(np.float32) for p, v in flat_sets.items()}
            flat_note = "mean of the flat sets before and after each projection"
        else:
            # Without flats, each pixel's brightest projection stands in for the beam.
            logger.warning("run %s has no flats: flat = per-pixel maximum", raw_uid)
            flat_sets = {0: raw.max(axis=0, keepdims=True).astype(np.float32)}
            flat_note = "no flats: per-pixel maximum over projections"
        proj = self._line_integrals(raw, darks, flat_sets)
        del raw
        if self.ring_removal:
            # In place: proj is this method's own float32 temporary, and a copy of a
            # 1601 x 1024 x 1024 stack would be 6.7 GB more at the peak.
            remove_stripe_offsets(proj, out=proj)
        t_read = time.perf_counter() - t0

        if self.fixed_center is not None:
            center, center_method = float(self.fixed_center), "given"
        else:
            rows = structured_rows(proj)
            center = find_center(proj, angles, rows=rows)
            center_method = f"{qualified_name(find_center)} on rows {rows}"
        t1 = time.perf_counter()
        if self.algorithm == "gridrec":
            # Slab by slab, the slabs sharing the geometry's plans (one engine per
            # core), or on a dask cluster when one is configured; equal to
            # reconstruct() of the whole stack to float rounding.
            volume, _ = compute.reconstruct_array(
                proj, angles, center, filter_name=self.filter_name, scheduler=self.dask_scheduler
            )
        else:
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

        pixel_um = self.tomo.pixel_size_um
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
            "center_guess_px": self.tomo.center_guess_px,
            "algorithm": self.algorithm,
            "filter_name": self.filter_name,
            "pixel_size_um": pixel_um,
            "num_projections": int(len(angles)),
            "angle_range_deg": float(np.rad2deg(np.ptp(angles))),
            "angle_source": angle_source,
            "flat_normalisation": flat_note,
            "ring_removal": qualified_name(remove_stripe_offsets) if self.ring_removal else None,
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
            "sample_id": start.get("sample_id", self.tomo.sample_id or ""),
            "tomo": self.tomo_md,
            "parameters": parameters,
            **provenance((normalize, minus_log, find_center, reconstruct)),
            "figures": [str(self.paths["figure"])],
            "files": {k: str(v) for k, v in self.paths.items() if k != "figure"},
        }
        if "mosaic" in start:
            md["mosaic"] = start["mosaic"]
        return publish_derived_run(
            self.publish,
            md,
            volume_path=self.paths["volume"],
            volume_shape=shape,
            scalars={k: float(v) for k, v in self.metrics.items()},
        )


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


def add_scale_bar(ax, shape, pixel_um=None, *, unit="um", color="white") -> None:
    """A scale bar of a "nice" length (~1/5 of the width) at the lower right of an image.

    ``shape`` is the image's ``(rows, cols)``; without ``pixel_um`` the bar is in
    pixels (``unit`` then says so).
    """
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    scale = pixel_um or 1.0
    bar = nice_length(shape[1] * scale / 5)
    ax.add_artist(
        AnchoredSizeBar(
            ax.transData,
            bar / scale,
            f"{bar:g} {unit}",
            "lower right",
            pad=0.4,
            color=color,
            frameon=False,
            size_vertical=max(1.0, shape[0] / 150),
        )
    )


def slice_figure(path, image, pixel_um=None, *, title="", dpi=110) -> None:
    """PNG of one slice with a scale bar and a colour bar (matplotlib, Agg, thread-safe).

    Values are shown per um (attenuation coefficient, 1/um) when the pixel
    size is known, per pixel otherwise.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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
    add_scale_bar(ax, image.shape, pixel_um, unit=length_unit, color="white")
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
