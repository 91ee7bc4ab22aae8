"""Live chemical-state maps of XANES runs: whiteline and edge-energy maps as energies arrive.

:class:`LiveXANESMap` consumes the documents of a XANES run exactly as decision
0006 (``docs/decisions/0006-xanes-run-documents.md``) describes them, so it works
live and on a run replayed from the catalog alike:

* ``xanes_2d``: darks are averaged; as each energy's flat and sample frames
  arrive (read from the HDF5 files the stream_resource/stream_datum documents
  reference, :class:`~multiscope.callbacks.frames.FrameReader`), the sample
  frames are normalised by that energy's flat field (policy ``every``: its own
  flats; ``every_n``: the nearest flat set in energy; ``interpolate``: the
  dark-subtracted flats of the sets before and after, linearly in energy),
  converted to absorbance and registered to the first energy.  Once the whiteline
  window and two pre-edge energies are in, every further energy updates the
  whiteline map (and, with two post-edge energies, the edge-energy map): a
  vectorised fit of the energies so far, milliseconds per update at 128 x 128
  px, ~0.3 s at 1024 x 1024.  At a successful stop the full analysis runs:
  :func:`~multiscope.analysis.xanes.align_stack` to the reference energy with
  the re-sampling (partial-volume) correction, normalisation, whiteline and edge
  fits; the result is stored as a derived run.
* ``xanes_3d`` (step or fly: fly frames come without events, ``num_frames`` per
  energy in order, the angle in their HDF5 attribute): each energy's projections
  are normalised the same way, ``-log``-ed, registered to the first energy's
  (drift: a row shift of the projections and a rotation-centre shift), the
  rotation centre is found once (first energy) and each energy is reconstructed
  (:mod:`multiscope.analysis.tomo`) into an HDF5 file of volumes (attenuation
  in 1/um when the pixel size is known).  The live maps are those of the central
  slice.  At the stop the same per-voxel fit runs slab by slab along z.

Memory (``xanes_3d``): while acquiring, one energy's projections
``(angles, ny, nx)`` and one volume ``(ny, nx, nx)`` (float32) plus the central
slice of every energy; the final fit reads ``chunk_slices`` z-slices of every
energy at a time (``~16 * energies * chunk_slices * nx^2`` bytes with its
temporaries) and writes each slab's maps straight to the file, so the peak is
set by ``memory_mb`` (default 512 MB), whatever the volume size.  ``xanes_2d``
keeps the absorbance stack ``(energies, ny, nx)`` float32 (240 MB for 60
energies of 1024 x 1024) and, during the final alignment, a few copies of it.

Derived run (``plan_name="xanes_map"``)
---------------------------------------
``start``
    ``derived_from`` (raw uid), ``sample_id``, ``campaign_id`` (if any), the raw
    ``xanes`` block (and ``tomo`` for 3D), ``parameters`` (windows, stencil, mask
    threshold, reference energy, flat handling, re-sampling correction,
    reconstruction), ``software``, ``analysis_functions``, ``figures`` (PNG
    paths) and ``results`` (``maps``: the HDF5 file, and its dataset names).
``descriptor`` ``primary``
    scalars only (tiled tables take scalars): ``median_whiteline_eV``,
    ``whiteline_iqr_eV``, ``median_edge_eV``, ``fraction_masked``,
    ``fraction_out_of_view``, ``max_shift_px``, ``median_edge_jump``,
    ``num_energies``.
``event`` (seq_num 1), then ``stop`` (``success``).

``<output_dir>/<raw uid>/maps.h5`` holds ``whiteline_eV``, ``edge_eV`` (float32,
NaN where masked), ``mask`` (bool, True = masked: too little of the element, or
out of view), ``shifts_px`` (``(energies, 2)``, applied shifts in px,
rows/cols), ``out_of_view`` (bool), ``edge_jump`` (float32) and
``energies_keV``; 3D maps are ``(z, y, x)``; 3D ``shifts_px`` are the drift
corrections (rows applied to the projections, columns as a rotation-centre shift;
:mod:`multiscope.analysis.xanes_drift`) and ``out_of_view`` the z-slices a row
shift could not fill.  The TXM session's pipeline puts
``<output_dir>`` at ``<data_dir>/derived/txm/xanes``.

Examples
--------
>>> from event_model import RunRouter
>>> router = RunRouter([xanes_factory(output_dir="derived/xanes")])  # doctest: +SKIP
>>> live = LiveXANESMap("derived/xanes", publish=catalog.writer())    # doctest: +SKIP
>>> live.on_update(lambda maps, n: print(n, np.nanmedian(maps["whiteline_eV"])))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np
from event_model import DocumentRouter, compose_run

from multiscope.analysis import xanes as xa
from multiscope.analysis import xanes_drift as xd
from multiscope.analysis.tomo import find_center, minus_log, normalize, reconstruct
from multiscope.callbacks.frames import FrameReader
from multiscope.callbacks.tomo import (
    THETA_ATTRIBUTE,
    json_safe,
    nice_length,
    qualified_name,
    software_versions,
    structured_rows,
)
from multiscope.plan_stubs.xanes import flat_indices

__all__ = [
    "XANES_PLANS",
    "LiveXANESMap",
    "derived_documents",
    "fit_volumes",
    "histogram_figure",
    "spectra_figure",
    "whiteline_map_figure",
    "xanes_factory",
]

logger = logging.getLogger(__name__)

XANES_PLANS = ("xanes_2d", "xanes_3d")
MAP_DATASETS = ("whiteline_eV", "edge_eV", "mask", "shifts_px", "out_of_view", "edge_jump")
# A pixel whose step passes min_edge_jump still needs this significance (rim scatter).
_MIN_STEP_SIGNIFICANCE = 1.0

_DEFAULT_KEYS = {
    "image_field": "camera_image",
    "energy_field": "energy_energy",
    "energy_index_field": "xanes_energy_index",
}


def xanes_factory(**kwargs) -> Callable:
    """A :class:`event_model.RunRouter` factory giving each XANES run a fresh :class:`LiveXANESMap`.

    Parameters
    ----------
    **kwargs
        Passed to :class:`LiveXANESMap` for every run (``output_dir`` is required).
    """

    def factory(name, start_doc):
        if start_doc.get("plan_name") in XANES_PLANS:
            return [LiveXANESMap(**kwargs)], []
        return [], []

    return factory


class _FrameSet:
    """Running sum of the frames of one (stream, energy index); 3D keeps every frame."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.sum: np.ndarray | None = None
        self.frames: list[np.ndarray] = []
        self.angles: list[float] = []
        self.count = 0
        self.sealed = False

    def add(self, frame: np.ndarray, angle: float | None = None) -> None:
        if self.keep:
            self.frames.append(np.asarray(frame, np.float32))
            self.angles.append(math.nan if angle is None else float(angle))
        elif self.sum is None:
            self.sum = np.asarray(frame, np.float64).copy()
        else:
            self.sum += frame
        self.count += 1

    def mean(self) -> np.ndarray:
        if self.keep:
            return np.mean(self.frames, axis=0)
        return self.sum / self.count


class LiveXANESMap(DocumentRouter):
    """Whiteline and edge-energy maps of a XANES run, live and at its end.

    Parameters
    ----------
    output_dir : path-like
        Results go to ``<output_dir>/<raw uid>/``: ``maps.h5``, ``whiteline_map.png``,
        ``whiteline_histogram.png``, ``spectra.png`` (3D also ``volumes.h5``).
    publish : callable, optional
        ``publish(name, doc)`` receives the derived run's documents (e.g. the
        catalog writer).
    reference_index : int
        Energy whose image defines the frame of the final 2D maps (default -1: the
        last, a post-edge energy, whose contrast is that of the structure model).
    min_edge_jump : float
        2D: live maps mask pixels whose edge step (absorbance) is below this; the
        final map keeps a pixel whose step is at least this (and above its scatter)
        if it connects to certain material (:func:`~multiscope.analysis.xanes.material_mask`).
    significance : tuple of float
        2D final map: ``(low, high)`` significance (edge step / its standard error
        from the pixel's pre/post-edge scatter) of possible and certain material;
        possible pixels connected to certain ones are kept, the rest masked.
    min_edge_jump_per_um : float
        3D: voxels whose edge step (attenuation, 1/um; per voxel without a pixel
        size) is below this are masked.
    n_points : int, optional
        Whiteline stencil (odd); default: the points spanning +-2 eV on the grid's
        median step inside the whiteline window (9 for 0.5 eV, 5 for 1 eV).
    correct_resampling : bool
        2D: correct the partial-volume error of sub-pixel re-sampling
        (:func:`~multiscope.analysis.xanes.align_stack` with ``structure`` = the
        post-edge energies, ``related`` = the whiteline and post-edge energies).
    chunk_slices : int, optional
        3D: z-slices per slab of the final fit; default from ``memory_mb``.
    memory_mb : float
        3D: working-memory budget of the final fit.
    algorithm, filter_name : str
        3D: passed to :func:`~multiscope.analysis.tomo.reconstruct`.
    center : float, optional
        3D: rotation-axis column of the reference (first processed) energy; default:
        :func:`~multiscope.analysis.tomo.find_center` on it (the
        ``tomo.center_guess_px`` is not trusted).
    correct_drift : bool
        3D: estimate each energy's image shift against the first processed energy's
        projections (:func:`~multiscope.analysis.xanes_drift.register_projections`)
        and correct it before reconstructing: the column shift moves that energy's
        rotation centre, the row shift is applied to its projections.
    drift_angles : int
        3D: reference projections kept for the drift estimate (evenly spread).
    live : bool
        Update the maps while the run is acquired.
    reader_timeout : float
        Seconds to wait for frames the writer has not flushed yet.

    Attributes
    ----------
    maps : dict of str to ndarray
        Latest maps: ``whiteline_eV``, ``edge_eV``, ``mask``, ``shifts_px``,
        ``out_of_view``, ``edge_jump`` (3D live: of the central slice; 3D final:
        the volumes if they fit ``memory_mb``, else the central slice).
    energies_done : list of int
        Energy indices processed so far.
    history : list of dict
        One entry per map update: ``n_energies``, ``final``, ``time``.
    uid, raw_uid : str or None
        Derived run and raw run uids.
    paths : dict of str to Path
        Files written (``maps``, ``figures``, 3D ``volumes``).
    metrics : dict of str to float
        Scalars published in the derived event.
    parameters : dict
        Parameters recorded in the derived run.
    aligned : ndarray or None
        2D, after the run: the aligned, re-sampling-corrected absorbance stack
        ``(energies processed, ny, nx)``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        publish: Callable[[str, dict], object] | None = None,
        *,
        reference_index: int = -1,
        min_edge_jump: float = 0.03,
        min_edge_jump_per_um: float = 0.01,
        significance: tuple[float, float] = (6.0, 8.0),
        n_points: int | None = None,
        correct_resampling: bool = True,
        chunk_slices: int | None = None,
        memory_mb: float = 512.0,
        algorithm: str = "gridrec",
        filter_name: str = "shepp",
        center: float | None = None,
        correct_drift: bool = True,
        drift_angles: int = 32,
        live: bool = True,
        reader_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.publish = publish
        self.reference_index = reference_index
        self.min_edge_jump = float(min_edge_jump)
        self.significance = (float(significance[0]), float(significance[1]))
        self.min_edge_jump_per_um = float(min_edge_jump_per_um)
        self.fixed_n_points = n_points
        self.correct_resampling = correct_resampling
        self.chunk_slices = chunk_slices
        self.memory_mb = float(memory_mb)
        self.algorithm = algorithm
        self.filter_name = filter_name
        self.fixed_center = center
        self.correct_drift = bool(correct_drift)
        self.drift_angles = int(drift_angles)
        self.live = live
        self.frames = FrameReader(timeout=reader_timeout)
        self._listeners: list[Callable[[dict, int], object]] = []
        self._reset()

    def on_update(self, callback: Callable[[dict, int], object]) -> None:
        """Call ``callback(maps, n_energies)`` after every map update (live and final)."""
        self._listeners.append(callback)

    # ------------------------------------------------------------------ run state
    def _reset(self) -> None:
        self.active = False
        self.start_doc: dict | None = None
        self.md: dict = {}
        self.tomo_md: dict = {}
        self.kind = "2d"
        self.energies = np.zeros(0)
        self.maps: dict[str, np.ndarray] = {}
        self.energies_done: list[int] = []
        self.history: list[dict] = []
        self.uid: str | None = None
        self.raw_uid: str | None = None
        self.paths: dict[str, Path] = {}
        self.metrics: dict[str, float] = {}
        self.parameters: dict = {}
        self.center: float | None = None
        self._stream_of: dict[str, str] = {}
        self._frames_waiting: dict[tuple[str, int], list[np.ndarray]] = {}
        self._event_data: dict[tuple[str, int], tuple[int, float | None]] = {}
        self._sets: dict[tuple[str, int], _FrameSet] = {}
        self._dark = _FrameSet(keep=False)
        self._last_key: tuple[str, int] | None = None
        self._flat_notes: dict[int, str] = {}
        self._absorbance: np.ndarray | None = None
        self._live_aligned: np.ndarray | None = None
        self._live_shifts: np.ndarray | None = None
        self._live_ref: np.ndarray | None = None
        self._volumes: h5py.File | None = None
        self._volume_means: np.ndarray | None = None
        self._live_slices: np.ndarray | None = None
        self.aligned: np.ndarray | None = None
        self._missing_warned = False
        # 3D: fly runs (frames without events), drift across energies.
        self._fly = False
        self._frames_per_energy = 0
        self._drift_ref: xd.ProjectionReference | None = None
        self._drift_reference_index: int | None = None
        self._shifts_3d: np.ndarray | None = None
        self._angle_gap_rad = 0.0

    # ------------------------------------------------------------------ documents
    def start(self, doc):
        self.frames.close()
        self._close_volumes()
        self._reset()
        self.active = doc.get("plan_name") in XANES_PLANS and "xanes" in doc
        if not self.active:
            return
        self.start_doc = doc
        self.raw_uid = doc["uid"]
        self.md = {**_DEFAULT_KEYS, **dict(doc["xanes"])}
        self.kind = "3d" if doc["plan_name"] == "xanes_3d" else "2d"
        self.tomo_md = dict(doc.get("tomo") or {})
        self.energies = np.asarray(self.md["energies_keV"], dtype=np.float64)
        if np.any(np.diff(self.energies) <= 0):
            raise ValueError("xanes.energies_keV must be strictly increasing")
        self.pre = tuple(float(v) for v in self.md["pre_edge_keV"])
        self.post = tuple(float(v) for v in self.md["post_edge_keV"])
        self.window = tuple(float(v) for v in self.md["whiteline_keV"])
        self.n_points = self.fixed_n_points or _stencil(self.energies, self.window)
        self.angle_key = self.tomo_md.get("rotation", "sample_theta")
        # Fly tomograms (decision 0006): primary frames come without events, num_frames
        # per energy in energy order; the angle is the frames' HDF5 attribute.
        self._fly = self.kind == "3d" and self.tomo_md.get("scan_mode") == "fly"
        self._frames_per_energy = int(self.md.get("num_frames") or 0)
        if self._fly and self._frames_per_energy < 1:
            raise ValueError("a fly xanes_3d run needs xanes.num_frames (projections per energy)")
        self._shifts_3d = np.full((len(self.energies), 2), np.nan)
        policy = self.md.get("flat_policy", "every")
        try:
            self._expected_flats = set(
                flat_indices(len(self.energies), policy, self.md.get("flat_every"))
            )
        except ValueError:
            logger.warning("xanes run %s: unknown flat policy %r", self.raw_uid, policy)
            self._expected_flats = set()
        self.run_dir = self.output_dir / self.raw_uid
        logger.info(
            "xanes %s run %s: %d energies, flats %s, stencil %d points",
            self.kind,
            self.raw_uid,
            len(self.energies),
            policy,
            self.n_points,
        )

    def descriptor(self, doc):
        if not self.active:
            return
        self.frames.add_descriptor(doc)
        self._stream_of[doc["uid"]] = doc["name"]

    def stream_resource(self, doc):
        if self.active:
            self.frames.add_resource(doc)

    def stream_datum(self, doc):
        if not self.active:
            return
        stream = self._stream_of.get(doc.get("descriptor", ""))
        if stream not in ("dark", "flat", "primary"):
            return
        if self.frames.resource_of(doc).data_key != self.md["image_field"]:
            return
        if self._fly and stream == "primary":
            self._fly_frames(doc)
            return
        block = self.frames.read(doc)
        s0, s1 = block.seq_nums
        n_events = max(1, s1 - s0)
        per_event = max(1, len(block.data) // n_events)
        for k in range(n_events):
            frames = block.data[k * per_event : (k + 1) * per_event]
            for frame in frames:
                if stream == "dark":
                    self._add_frame("dark", 0, frame, None)
                    continue
                key = (stream, s0 + k)
                if key in self._event_data:
                    index, angle = self._event_data.pop(key)
                    self._add_frame(stream, index, frame, angle)
                else:
                    self._frames_waiting.setdefault(key, []).append(frame)
        self._advance()

    def _fly_frames(self, doc) -> None:
        """Fly projections: energy index from the sequence number, angle from the file."""
        block = self.frames.read(doc, attributes=(THETA_ATTRIBUTE,))
        theta = block.attributes.get(THETA_ATTRIBUTE)
        s0, s1 = block.seq_nums
        per_event = max(1, len(block.data) // max(1, s1 - s0))
        for k, frame in enumerate(block.data):
            seq = s0 + k // per_event
            index = (seq - 1) // self._frames_per_energy  # seq_nums start at 1
            angle = None if theta is None else float(theta[k])
            self._add_frame("primary", index, frame, angle)
        self._advance()

    def event_page(self, doc):
        if not self.active:
            return
        stream = self._stream_of.get(doc["descriptor"])
        if stream not in ("flat", "primary"):
            return
        index_key = self.md["energy_index_field"]
        data = doc["data"]
        if index_key not in data:
            return
        angles = data.get(self.angle_key) if self.kind == "3d" else None
        for j, seq in enumerate(doc["seq_num"]):
            index = int(data[index_key][j])
            angle = None if angles is None else float(angles[j])
            key = (stream, int(seq))
            waiting = self._frames_waiting.pop(key, None)
            if waiting is None:
                self._event_data[key] = (index, angle)
                continue
            for frame in waiting:
                self._add_frame(stream, index, frame, angle)
        self._advance()

    def stop(self, doc):
        if not self.active:
            return
        try:
            if self._frames_waiting:
                logger.warning(
                    "xanes run %s: %d frames never got their energy index",
                    self.raw_uid,
                    len(self._frames_waiting),
                )
            self._dark.sealed = True
            for s in self._sets.values():
                s.sealed = True
            self._advance(final=True)
            if doc.get("exit_status") != "success":
                logger.info(
                    "xanes map of run %s not stored: run %s", self.raw_uid, doc.get("exit_status")
                )
                return
            if not self.energies_done:
                logger.warning("xanes run %s: no energy could be processed", self.raw_uid)
                return
            if self.kind == "2d":
                self._finish_2d()
            else:
                self._finish_3d()
        finally:
            self.frames.close()
            self._close_volumes()
            self.active = False

    # ------------------------------------------------------------------ frames -> sets
    def _add_frame(self, stream: str, index: int, frame, angle) -> None:
        if stream == "dark":
            self._dark.add(frame)
            n = int(self.md.get("num_darks") or 0)
            if n and self._dark.count >= n:
                self._dark.sealed = True
            return
        self._dark.sealed = True  # darks come first (decision 0006)
        if not 0 <= index < len(self.energies):
            logger.warning("xanes run %s: energy index %d out of range", self.raw_uid, index)
            return
        key = (stream, index)
        # Any frame of another energy completes every open set of other energies; in 2D
        # the first sample frame of an energy also completes its flats.
        if self._last_key is not None and self._last_key != key:
            for (st, i), s in self._sets.items():
                if i != index or (self.kind == "2d" and st == "flat" and stream == "primary"):
                    s.sealed = True
        self._last_key = key
        fs = self._sets.get(key)
        if fs is None:
            fs = self._sets[key] = _FrameSet(keep=self.kind == "3d" and stream == "primary")
        elif fs.sealed:
            logger.warning(
                "xanes run %s: late %s frame of energy %d ignored", self.raw_uid, stream, index
            )
            return
        fs.add(frame, angle)
        if self.kind == "2d":
            n = int(self.md.get("num_frames" if stream == "primary" else "num_flats") or 0)
            if n and fs.count >= n:
                fs.sealed = True

    def _advance(self, final: bool = False) -> None:
        """Process every complete energy whose dark and flats are available."""
        if not self._dark.sealed and int(self.md.get("num_darks") or 0) > 0:
            return
        processed = False
        for (stream, index), fs in sorted(self._sets.items(), key=lambda kv: kv[0][1]):
            if stream != "primary" or not fs.sealed or index in self.energies_done:
                continue
            flat = self._flat_for(index, final)
            if flat is None:
                continue
            if self.kind == "2d":
                self._process_2d(index, fs, flat)
            else:
                self._process_3d(index, fs, flat)
            fs.sum, fs.frames = None, []  # free the raw frames
            self.energies_done.append(index)
            processed = True
        if processed and self.live:
            self._update_live()

    # ------------------------------------------------------------------ flat fields
    def _dark_frame(self, shape) -> np.ndarray:
        if self._dark.count:
            return self._dark.mean()
        if not self._missing_warned:
            logger.warning("xanes run %s has no darks: dark = 0", self.raw_uid)
            self._missing_warned = True
        return np.zeros(shape)

    def _flat_for(self, index: int, final: bool) -> np.ndarray | None:
        """Dark-subtracted flat for energy ``index`` by the run's flat policy (None: wait)."""
        ready = sorted(i for (st, i), s in self._sets.items() if st == "flat" and s.sealed)
        expected = sorted(self._expected_flats | set(ready))
        policy = self.md.get("flat_policy", "every")
        e = self.energies
        if policy == "interpolate":
            before = [i for i in expected if i <= index][-1:]
            after = [i for i in expected if i >= index][:1]
            use = sorted(set(before + after))  # [index] itself if it has flats
        elif policy == "every_n":
            use = [min(expected, key=lambda i: (abs(e[i] - e[index]), i))] if expected else []
        else:
            use = [index]
        if not use:  # no policy to follow (unknown or inconsistent metadata): nearest set
            if not ready:
                return None
            use = [min(ready, key=lambda i: (abs(e[i] - e[index]), i))]
        if any(i not in ready for i in use):
            if not final:
                return None
            use = [i for i in use if i in ready]
            if not use:
                if not ready:
                    logger.error("xanes run %s: no flats at all", self.raw_uid)
                    return None
                use = [min(ready, key=lambda i: (abs(e[i] - e[index]), i))]
                logger.warning(
                    "xanes run %s: energy %d uses the nearest flat set (%d)",
                    self.raw_uid,
                    index,
                    use[0],
                )
        sets = {i: self._sets[("flat", i)].mean() for i in use}
        dark = self._dark_frame(next(iter(sets.values())).shape)
        if len(use) == 1:
            self._flat_notes[index] = f"flat set {use[0]}"
            return sets[use[0]] - dark
        a, b = use
        t = (e[index] - e[a]) / (e[b] - e[a])
        self._flat_notes[index] = f"flat sets {a}, {b} interpolated (t={t:.3f})"
        return (1 - t) * (sets[a] - dark) + t * (sets[b] - dark)

    def _transmission(self, frames, flat_minus_dark) -> np.ndarray:
        dark = self._dark_frame(flat_minus_dark.shape)
        return normalize(frames, flat_minus_dark + dark, dark)

    # ------------------------------------------------------------------ 2D
    def _process_2d(self, index: int, fs: _FrameSet, flat: np.ndarray) -> None:
        absorbance = minus_log(self._transmission(fs.mean()[None], flat))[0]
        shape = (len(self.energies), *absorbance.shape)
        if self._absorbance is None:
            self._absorbance = np.full(shape, np.nan, np.float32)
        self._absorbance[index] = absorbance
        if not self.live:
            return
        if self._live_aligned is None:
            self._live_aligned = np.full(shape, np.nan, np.float32)
            self._live_shifts = np.zeros((len(self.energies), 2))
        # Live alignment: one registration to the first energy's features per energy;
        # the final analysis aligns everything again to the reference energy.
        feats = xa.feature_image(absorbance)
        if self._live_ref is None:
            self._live_ref = feats
            shift = np.zeros(2)
        else:
            shift = xa.register_translation(self._live_ref, feats)
        self._live_shifts[index] = shift
        self._live_aligned[index] = xa.shift_stack(absorbance[None], shift[None])[0]

    def _enough(self, done: Sequence[int]) -> bool:
        e = self.energies
        in_window = np.flatnonzero((e >= self.window[0]) & (e <= self.window[1]))
        pre = [i for i in done if self.pre[0] <= e[i] <= self.pre[1]]
        return len(pre) >= 2 and set(in_window) <= set(done) and len(in_window) >= self.n_points

    def _live_maps(self, stack, done, threshold, shifts=None) -> dict | None:
        """Maps from the energies processed so far (provisional before the post-edge)."""
        e = self.energies[done]
        y = stack[done]
        post = [i for i in done if self.post[0] <= self.energies[i] <= self.post[1]]
        if len(post) >= 2:
            norm, jump, mask = xa.normalize(y, e, self.pre, self.post, min_edge_jump=threshold)
            edge = xa.edge_energy(norm, e, mask=mask, window=self._edge_window())
        else:
            # Before the post-edge: subtract the pre-edge line only; the whiteline's
            # position does not depend on the edge-step scale.  The step is judged
            # from the energies above the whiteline window's peak search start.
            pre_idx = np.flatnonzero((e >= self.pre[0]) & (e <= self.pre[1]))
            x = np.stack([np.ones(pre_idx.size), e[pre_idx] - e[pre_idx].mean()], axis=1)
            coef = np.linalg.pinv(x) @ y[pre_idx].reshape(pre_idx.size, -1)
            line = coef[0] + np.outer(e - e[pre_idx].mean(), coef[1])
            norm = y - line.reshape(y.shape).astype(np.float32)
            jump = np.mean(norm[e >= self.window[0]], axis=0)  # NaN (out of view) stays NaN
            mask = ~(jump >= threshold)
            norm[:, mask] = np.nan
            edge = np.full(mask.shape, np.nan)
        wl = xa.fit_whiteline(norm, e, self.window, mask=mask, n_points=self.n_points)
        out = {
            "whiteline_eV": (wl * 1000.0).astype(np.float32),
            "edge_eV": (edge * 1000.0).astype(np.float32),
            "mask": mask,
            "edge_jump": jump.astype(np.float32),
        }
        if shifts is not None:
            out["shifts_px"] = shifts
            out["out_of_view"] = xa.out_of_view(shifts[done], mask.shape)
        return out

    def _edge_window(self) -> tuple[float, float]:
        return (self.pre[1], self.window[1])

    def _update_live(self) -> None:
        done = sorted(self.energies_done)
        if not self._enough(done):
            return
        if self.kind == "2d":
            maps = self._live_maps(
                self._live_aligned, done, self.min_edge_jump, shifts=self._live_shifts
            )
        else:
            maps = self._live_maps(self._live_slices, done, self._jump_3d())
        self._set_maps(maps, len(done), final=False)

    def _set_maps(self, maps: dict, n: int, final: bool) -> None:
        self.maps = maps
        self.history.append({"n_energies": n, "final": final, "time": time.time()})
        for callback in self._listeners:
            callback(maps, n)

    def _finish_2d(self) -> None:
        t0 = time.perf_counter()
        done = sorted(self.energies_done)
        e = self.energies[done]
        stack = self._absorbance[done]
        ref_energy = range(len(self.energies))[self.reference_index]
        ref = done.index(ref_energy) if ref_energy in done else len(done) - 1
        structure = [
            j for j, i in enumerate(done) if self.post[0] <= self.energies[i] <= self.post[1]
        ]
        related = [j for j, i in enumerate(done) if self.energies[i] >= self.window[0]]
        correct = self.correct_resampling and len(structure) >= 2
        shifts, aligned = xa.align_stack(
            stack,
            reference_index=ref,
            structure=structure if correct else None,
            related=related if correct else None,
        )
        t_align = time.perf_counter() - t0
        # Normalise every finite pixel, then mask by significance against each pixel's
        # own scatter and connection to certain material (analysis.xanes.material_mask).
        norm, jump, _ = xa.normalize(aligned, e, self.pre, self.post, min_edge_jump=-np.inf)
        jump_error = xa.edge_step_error(aligned, e, self.pre, self.post)
        mask = xa.material_mask(
            jump, jump_error, min_edge_jump=self.min_edge_jump,
            low=self.significance[0], high=self.significance[1],
            min_significance=_MIN_STEP_SIGNIFICANCE,
        )  # fmt: skip
        norm[:, mask] = np.nan
        wl = xa.fit_whiteline(norm, e, self.window, mask=mask, n_points=self.n_points)
        edge = xa.edge_energy(norm, e, mask=mask, window=self._edge_window())
        all_shifts = np.full((len(self.energies), 2), np.nan)
        all_shifts[done] = shifts
        maps = {
            "whiteline_eV": (wl * 1000.0).astype(np.float32),
            "edge_eV": (edge * 1000.0).astype(np.float32),
            "mask": mask,
            "shifts_px": all_shifts,
            "out_of_view": xa.out_of_view(shifts, mask.shape),
            "edge_jump": jump.astype(np.float32),
            "edge_jump_error": jump_error.astype(np.float32),
        }
        self.aligned = aligned
        self._live_aligned = None  # the final maps replace the live ones
        self._set_maps(maps, len(done), final=True)
        self.parameters = {
            **self._common_parameters(done),
            "reference_index": int(ref_energy if ref_energy in done else done[-1]),
            "min_edge_jump": self.min_edge_jump,
            "mask": "edge step significant against its pre/post-edge scatter (z >= "
            f"{self.significance[0]:g}, or step >= min_edge_jump and z >= "
            f"{_MIN_STEP_SIGNIFICANCE:g}) and connected "
            f"to z >= {self.significance[1]:g}",
            "significance": list(self.significance),
            "alignment": "gradient features, cross-correlation (2 passes)"
            + (", model-refined" if correct else ""),
            "correct_resampling": bool(correct),
            "structure_energies": [int(done[j]) for j in structure] if correct else [],
            "related_energies": [int(done[j]) for j in related] if correct else [],
            "align_s": round(t_align, 3),
        }
        self._write_outputs(maps, norm, e)

    # ------------------------------------------------------------------ 3D
    def _jump_3d(self) -> float:
        return self.min_edge_jump_per_um

    def _process_3d(self, index: int, fs: _FrameSet, flat: np.ndarray) -> None:
        order = np.argsort(fs.angles, kind="stable")
        angles_deg = np.asarray(fs.angles)[order]
        if not np.all(np.isfinite(angles_deg)):
            raise ValueError(f"projections of energy {index} lack the angle {self.angle_key!r}")
        frames = np.asarray(fs.frames, np.float32)[order]
        proj = minus_log(self._transmission(frames, flat))
        angles = np.deg2rad(angles_deg)
        shift = self._drift_shift(index, proj, angles)
        if self.center is None:  # the reference energy: its shift is zero
            if self.fixed_center is not None:
                self.center = float(self.fixed_center)
            else:
                self.center = float(find_center(proj, angles, rows=structured_rows(proj)))
            logger.info("xanes_3d run %s: rotation centre %.2f px", self.raw_uid, self.center)
        # The image drifted by -shift: its rotation axis too (columns), and its slices (rows).
        center = self.center - float(shift[1])
        proj = xd.shift_rows(proj, float(shift[0]))
        volume = reconstruct(
            proj, angles, center=center, algorithm=self.algorithm, filter_name=self.filter_name
        )
        pixel_um = self._pixel_um()
        if pixel_um:
            volume /= pixel_um  # attenuation per pixel -> 1/um: thresholds in physical units
        if self._volumes is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.paths["volumes"] = self.run_dir / "volumes.h5"
            self._volumes = h5py.File(self.paths["volumes"], "w")
            nz, ny, nx = volume.shape
            self._volumes.create_dataset(
                "volumes",
                shape=(len(self.energies), nz, ny, nx),
                dtype=np.float32,
                chunks=(1, 1, ny, nx),  # one slice per chunk: z-slabs read only what they need
                fillvalue=np.nan,
            )
            self._volumes["energies_keV"] = self.energies
            self._volume_means = np.full(len(self.energies), np.nan)
            self._live_slices = np.full((len(self.energies), ny, nx), np.nan, np.float32)
        self._volumes["volumes"][index] = volume
        self._volume_means[index] = float(np.mean(volume))
        self._live_slices[index] = volume[volume.shape[0] // 2]

    def _drift_shift(self, index: int, proj: np.ndarray, angles: np.ndarray) -> np.ndarray:
        """Shift (rows, cols) registering energy ``index`` onto the reference energy.

        The reference is the first energy processed (normally the first of the grid):
        live, each energy is reconstructed as soon as it is complete, so its reference
        must already be there; a later one would mean reconstructing every earlier
        energy again.  The maps are then in the reference energy's frame.
        """
        shift = np.zeros(2)
        if self.correct_drift:
            if self._drift_ref is None:
                self._drift_ref = xd.projection_reference(proj, angles, self.drift_angles)
                self._drift_reference_index = index
            else:
                shift = xd.register_projections(self._drift_ref, proj, angles)
                _, gap = xd.matched_angles(self._drift_ref.angles_rad, angles)
                self._angle_gap_rad = max(self._angle_gap_rad, float(gap.max()))
                logger.debug(
                    "xanes_3d run %s: energy %d shift (%.3f, %.3f) px",
                    self.raw_uid,
                    index,
                    *shift,
                )
        self._shifts_3d[index] = shift
        return shift

    def _pixel_um(self) -> float | None:
        value = self.md.get("pixel_size_um") or self.tomo_md.get("pixel_size_um")
        return float(value) if value else None

    def _slab_slices(self, shape) -> int:
        if self.chunk_slices:
            return max(1, int(self.chunk_slices))
        n_e, nz, ny, nx = shape
        per_slice = 16 * n_e * ny * nx  # float32 slab, normalised copy, fit temporaries
        return int(np.clip(self.memory_mb * 2**20 // per_slice, 1, nz))

    def _finish_3d(self) -> None:
        done = sorted(self.energies_done)
        e = self.energies[done]
        ds = self._volumes["volumes"]
        self._volumes.flush()
        e0 = xa.steepest_rise(self._volume_means[done], e, self.pre, self.post)
        slab = self._slab_slices(ds.shape)
        threshold = self._jump_3d()
        edge_window = self._edge_window()
        _, nz, ny, nx = ds.shape
        shifts = self._shifts_3d
        # z-slices some energy's row shift could not fill: masked, as 2D's out-of-view pixels.
        oov_rows = xd.out_of_view_rows(shifts[done, 0], nz)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        maps_path = self.run_dir / "maps.h5"
        tmp = maps_path.with_name(maps_path.name + ".part")
        t0 = time.perf_counter()
        with h5py.File(tmp, "w") as out:
            fitted = fit_volumes(
                ds,
                self.energies,
                self.pre,
                self.post,
                self.window,
                out,
                n_points=self.n_points,
                min_edge_jump=threshold,
                e0=e0,
                chunk_slices=slab,
                indices=done,
                edge_window=edge_window,
                out_of_view_slices=oov_rows,
            )
            out["shifts_px"] = shifts
            out["out_of_view"] = np.broadcast_to(oov_rows[:, None, None], (nz, ny, nx))
            out["energies_keV"] = self.energies
            out.attrs["derived_from"] = self.raw_uid
            out.attrs["units"] = "eV; edge_jump in 1/um" if self._pixel_um() else "eV"
        os.replace(tmp, maps_path)
        t_fit = time.perf_counter() - t0
        self.paths["maps"] = maps_path
        full_bytes = 4 * 4 * nz * ny * nx
        with h5py.File(maps_path, "r") as f:
            if full_bytes <= self.memory_mb * 2**20:
                maps = {name: f[name][()] for name in MAP_DATASETS}
            else:  # too big to hold: the central slice
                maps = {name: f[name][nz // 2] for name in MAP_DATASETS if name != "shifts_px"}
                maps["shifts_px"] = f["shifts_px"][()]
        self._set_maps(maps, len(done), final=True)
        central = (
            maps["whiteline_eV"]
            if maps["whiteline_eV"].ndim == 2
            else maps["whiteline_eV"][nz // 2]
        )
        sl = self._live_slices[done]
        norm_c, _, _ = xa.normalize(sl, e, self.pre, self.post, min_edge_jump=threshold, e0=e0)
        self.parameters = {
            **self._common_parameters(done),
            "min_edge_jump_per_um": threshold,
            "e0_keV": float(e0),
            "center_px": self.center,
            "center_method": "given"
            if self.fixed_center is not None
            else f"{qualified_name(find_center)} on the first energy",
            "algorithm": self.algorithm,
            "filter_name": self.filter_name,
            "chunk_slices": slab,
            "units": "1/um" if self._pixel_um() else "attenuation per voxel",
            "fit_s": round(t_fit, 3),
            **self._drift_parameters(done),
        }
        kept = ~maps["mask"]
        done_shifts = shifts[done]
        self.metrics = _summary(
            fitted["sample"],
            maps["edge_eV"][kept],
            maps["edge_jump"][kept],
            fitted["n_masked"] / float(nz * ny * nx),
            float(oov_rows.mean()),
            float(np.abs(done_shifts).max()) if done_shifts.size else 0.0,
            len(done),
        )
        self._figures(central, norm_c, e, hist=(fitted["counts"], fitted["bins"]))
        self._publish_run()

    def _drift_parameters(self, done) -> dict:
        """What the 3D drift correction did, for the derived run's parameters."""
        return {
            "drift_correction": self.correct_drift,
            "drift_method": (
                f"{qualified_name(xd.register_projections)}: angle-matched projections "
                f"(up to {self.drift_angles}), gradient features, summed cross-power"
                if self.correct_drift
                else "none"
            ),
            "drift_reference_index": self._drift_reference_index,
            "shifts_px": {str(i): [float(v) for v in self._shifts_3d[i]] for i in done},
            # each energy's rotation centre: the reference's minus its column shift
            "centers_px": {str(i): self.center - float(self._shifts_3d[i, 1]) for i in done},
            "max_angle_gap_deg": round(math.degrees(self._angle_gap_rad), 4),
            "scan_mode": "fly" if self._fly else "step",
        }

    # ------------------------------------------------------------------ outputs
    def _common_parameters(self, done) -> dict:
        return {
            "kind": self.kind,
            "pre_edge_keV": list(self.pre),
            "post_edge_keV": list(self.post),
            "whiteline_keV": list(self.window),
            "edge_level": 0.5,
            "edge_window_keV": list(self._edge_window()),
            "n_points": int(self.n_points),
            "whiteline_method": "argmax + least-squares quadratic",
            "num_energies": len(done),
            "missing_energies": [i for i in range(len(self.energies)) if i not in done],
            "flat_policy": self.md.get("flat_policy"),
            "flat_every": self.md.get("flat_every"),
            "flat_used": {str(i): self._flat_notes.get(i, "") for i in done},
            "num_darks_used": int(self._dark.count),
            "pixel_size_um": self._pixel_um(),
        }

    def _write_outputs(self, maps: dict, norm: np.ndarray, e: np.ndarray) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "maps.h5"
        tmp = path.with_name(path.name + ".part")
        with h5py.File(tmp, "w") as f:
            for name in MAP_DATASETS:
                f.create_dataset(name, data=maps[name])
            f["energies_keV"] = self.energies
            f.attrs["derived_from"] = self.raw_uid
            f.attrs["units"] = "eV; edge_jump in absorbance; shifts_px in px (rows, cols)"
        os.replace(tmp, path)  # readers never see a partial file
        self.paths["maps"] = path
        kept = ~maps["mask"]
        wl = maps["whiteline_eV"][kept]
        shifts = maps["shifts_px"]
        self.metrics = _summary(
            wl,
            maps["edge_eV"][kept],
            maps["edge_jump"][kept],
            float(maps["mask"].mean()),
            float(maps["out_of_view"].mean()),
            float(np.nanmax(np.abs(shifts))) if np.isfinite(shifts).any() else 0.0,
            len(e),
        )
        bins = np.linspace(self.window[0] * 1000, self.window[1] * 1000, 61)
        self._figures(maps["whiteline_eV"], norm, e, hist=(np.histogram(wl, bins)[0], bins))
        self._publish_run()

    def _figures(self, wl_map, norm, e, hist) -> None:
        pixel_um = self._pixel_um()
        title = self.start_doc.get("sample_id") or self.md.get("sample_id") or self.raw_uid[:8]
        edge = self.md.get("edge", "")
        figs = {
            "map": self.run_dir / "whiteline_map.png",
            "histogram": self.run_dir / "whiteline_histogram.png",
            "spectra": self.run_dir / "spectra.png",
        }
        whiteline_map_figure(figs["map"], wl_map, pixel_um, title=f"{title}: {edge} whiteline")
        histogram_figure(figs["histogram"], *hist, title=f"{title}: {edge} whiteline energies")
        spectra_figure(
            figs["spectra"], norm, e, wl_map, self.window, self.n_points, title=f"{title}: spectra"
        )
        self.paths.update({f"figure_{k}": v for k, v in figs.items()})

    def _publish_run(self) -> None:
        start = self.start_doc
        md = {
            "plan_name": "xanes_map",
            "derived_from": self.raw_uid,
            "sample_id": start.get("sample_id", self.md.get("sample_id", "")),
            "xanes": self.md,
            "parameters": self.parameters,
            "software": software_versions(),
            "analysis_functions": [
                qualified_name(f)
                for f in (
                    normalize,
                    minus_log,
                    xa.align_stack,
                    xa.normalize,
                    xa.fit_whiteline,
                    xa.edge_energy,
                )
            ]
            + (
                [qualified_name(find_center), qualified_name(reconstruct)]
                if self.kind == "3d"
                else []
            ),
            "figures": [str(v) for k, v in self.paths.items() if k.startswith("figure_")],
            "results": {
                "maps": str(self.paths["maps"]),
                "datasets": list(MAP_DATASETS) + ["energies_keV"],
                **({"volumes": str(self.paths["volumes"])} if "volumes" in self.paths else {}),
            },
        }
        for key in ("campaign_id", "campaign"):
            if key in start:
                md[key] = start[key]
        if self.tomo_md:
            md["tomo"] = self.tomo_md
        docs = derived_documents(json_safe(md), self.metrics)
        self.uid = docs[0][1]["uid"]
        if self.publish is not None:
            for name, doc in docs:
                self.publish(name, doc)

    def _close_volumes(self) -> None:
        if self._volumes is not None:
            try:
                self._volumes.close()
            finally:
                self._volumes = None


# ---------------------------------------------------------------------- helpers
def fit_volumes(
    volumes,
    energies_keV,  # noqa: N803
    pre_edge: tuple[float, float],
    post_edge: tuple[float, float],
    whiteline: tuple[float, float],
    out,
    *,
    n_points: int,
    min_edge_jump: float,
    e0: float,
    chunk_slices: int,
    indices: Sequence[int] | None = None,
    edge_window: tuple[float, float] | None = None,
    out_of_view_slices: np.ndarray | None = None,
) -> dict:
    """Per-voxel normalisation, whiteline and edge fit of a stack of volumes, slab by slab.

    ``volumes`` (``(energies, z, y, x)``, e.g. an ``h5py.Dataset``) is read
    ``chunk_slices`` z-slices at a time, every energy of the slab at once, and each
    slab's maps go straight to ``out`` (an ``h5py`` file or group; datasets
    ``whiteline_eV``, ``edge_eV``, ``mask``, ``edge_jump``), so memory holds one slab:
    ``~16 * energies * chunk_slices * y * x`` bytes.  With ``e0`` fixed every voxel's
    result is independent of the slab size (the fits are per voxel and free of
    size-dependent BLAS rounding).

    Parameters
    ----------
    volumes : array_like
        ``(energies, z, y, x)`` attenuation volumes.
    energies_keV : array_like
        The run's energy grid.
    pre_edge, post_edge, whiteline : tuple of float
        Windows (keV) of :func:`~multiscope.analysis.xanes.normalize` and
        :func:`~multiscope.analysis.xanes.fit_whiteline`.
    out : h5py.Group
        Receives the maps, ``(z, y, x)``.
    n_points, min_edge_jump, e0 : int, float, float
        Stencil, mask threshold (units of ``volumes``), edge energy (keV).
    chunk_slices : int
        z-slices per slab.
    indices : sequence of int, optional
        Energies (rows of ``volumes``) to use, increasing; default all.
    edge_window : tuple of float, optional
        Window of :func:`~multiscope.analysis.xanes.edge_energy`.
    out_of_view_slices : numpy.ndarray, optional
        ``(z,)`` bool: z-slices to mask whole (rows the drift correction could not
        fill, :func:`~multiscope.analysis.xanes_drift.out_of_view_rows`).

    Returns
    -------
    dict
        ``counts``/``bins``: histogram of the unmasked whiteline energies (eV, 60
        bins over ``whiteline``); ``n_masked``; ``sample``: up to ~20,000 of the
        unmasked whiteline energies per slab (for summaries).
    """
    n_e, nz, ny, nx = volumes.shape
    rows = list(range(n_e)) if indices is None else [int(i) for i in indices]
    e = np.asarray(energies_keV, dtype=np.float64)[rows]
    dsets = {
        name: out.create_dataset(name, (nz, ny, nx), dtype=dt, chunks=(1, ny, nx))
        for name, dt in (
            ("whiteline_eV", np.float32),
            ("edge_eV", np.float32),
            ("mask", bool),
            ("edge_jump", np.float32),
        )
    }
    bins = np.linspace(whiteline[0] * 1000, whiteline[1] * 1000, 61)
    counts = np.zeros(bins.size - 1, np.int64)
    n_masked = 0
    sample: list[float] = []
    step = max(1, int(chunk_slices))
    for z0 in range(0, nz, step):
        z1 = min(nz, z0 + step)
        y = volumes[rows, z0:z1] if len(rows) < n_e else volumes[:, z0:z1]
        norm, jump, mask = xa.normalize(
            y, e, pre_edge, post_edge, min_edge_jump=min_edge_jump, e0=e0
        )
        if out_of_view_slices is not None and out_of_view_slices[z0:z1].any():
            mask = mask | out_of_view_slices[z0:z1, None, None]
            norm[:, mask] = np.nan
        wl = xa.fit_whiteline(norm, e, whiteline, mask=mask, n_points=n_points)
        edge = xa.edge_energy(norm, e, mask=mask, window=edge_window)
        dsets["whiteline_eV"][z0:z1] = wl * 1000.0
        dsets["edge_eV"][z0:z1] = edge * 1000.0
        dsets["mask"][z0:z1] = mask
        dsets["edge_jump"][z0:z1] = jump
        good = wl[~mask] * 1000.0
        counts += np.histogram(good, bins)[0]
        n_masked += int(mask.sum())
        sample.extend(good[:: good.size // 20000 + 1].tolist())
    return {"counts": counts, "bins": bins, "n_masked": n_masked, "sample": np.asarray(sample)}


def _stencil(energies: np.ndarray, window: tuple[float, float]) -> int:
    """Odd number of points spanning ~4 eV (+-2 eV) on the grid's step in ``window``."""
    inside = energies[(energies >= window[0]) & (energies <= window[1])]
    if inside.size < 4:
        return 3
    step = float(np.median(np.diff(inside)))
    n = 2 * int(round(0.002 / step)) + 1
    return int(np.clip(n, 3, inside.size if inside.size % 2 else inside.size - 1))


def _summary(wl, edge, jump, masked, out_of_view, max_shift, n_energies) -> dict[str, float]:
    wl = np.asarray(wl, np.float64)
    wl = wl[np.isfinite(wl)]
    edge = np.asarray(edge, np.float64)
    edge = edge[np.isfinite(edge)]
    jump = np.asarray(jump, np.float64)
    kept = jump[np.isfinite(jump)]
    nan = float("nan")
    q25, q50, q75 = np.percentile(wl, [25, 50, 75]) if wl.size else (nan, nan, nan)
    return {
        "median_whiteline_eV": float(q50),
        "whiteline_iqr_eV": float(q75 - q25),
        "median_edge_eV": float(np.median(edge)) if edge.size else nan,
        "fraction_masked": float(masked),
        "fraction_out_of_view": float(out_of_view),
        "max_shift_px": float(max_shift),
        "median_edge_jump": float(np.median(kept)) if kept.size else nan,
        "num_energies": int(n_energies),
    }


def derived_documents(metadata: dict, scalars: dict[str, float]) -> list[tuple[str, dict]]:
    """start, descriptor (``primary``, scalars only), event and stop of a derived run."""
    bundle = compose_run(metadata=metadata)
    data_keys = {
        key: {
            "source": "derived",
            "dtype": "integer" if isinstance(value, int | np.integer) else "number",
            "shape": [],
        }
        for key, value in scalars.items()
    }
    desc = bundle.compose_descriptor(
        name="primary", data_keys=data_keys, hints={"derived": {"fields": list(scalars)}}
    )
    now = time.time()
    data = {k: int(v) if isinstance(v, int | np.integer) else float(v) for k, v in scalars.items()}
    event = desc.compose_event(data=data, timestamps={k: now for k in data}, seq_num=1)
    return [
        ("start", bundle.start_doc),
        ("descriptor", desc.descriptor_doc),
        ("event", event),
        ("stop", bundle.compose_stop(exit_status="success")),
    ]


# ---------------------------------------------------------------------- figures
def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)  # Agg, no pyplot: safe on the pipeline's worker thread
    return fig


def whiteline_map_figure(path, wl_eV, pixel_um=None, *, title="", dpi=110) -> None:  # noqa: N803
    """PNG of a whiteline map (eV) with a colour bar in eV; masked pixels grey."""
    import matplotlib as mpl
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    img = np.asarray(wl_eV, np.float64)
    good = img[np.isfinite(img)]
    lo, hi = np.percentile(good, [1, 99]) if good.size else (0.0, 1.0)
    cmap = mpl.colormaps["viridis"].with_extremes(bad="0.75")  # masked pixels grey
    fig = _figure((5.6, 4.8))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(img), cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    if pixel_um:
        width = img.shape[1] * pixel_um
        bar = nice_length(width / 5)
        ax.add_artist(
            AnchoredSizeBar(
                ax.transData,
                bar / pixel_um,
                f"{bar:g} um",
                "lower right",
                pad=0.4,
                color="black",
                frameon=False,
                size_vertical=max(1.0, img.shape[0] / 150),
            )
        )
    fig.colorbar(im, ax=ax, label="whiteline energy (eV)", shrink=0.85)
    fig.savefig(path, dpi=dpi)


def histogram_figure(path, counts, edges, *, title="", dpi=110) -> None:
    """PNG of a histogram of whiteline energies (counts per bin of ``edges``, eV)."""
    fig = _figure((5.6, 3.6))
    ax = fig.add_subplot()
    ax.stairs(counts, edges, fill=True)
    ax.set_xlabel("whiteline energy (eV)")
    ax.set_ylabel("pixels")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)


def spectra_figure(path, norm, energies_keV, wl_map, window, n_points, *, title="", k=4, dpi=110):  # noqa: N803
    """PNG of ``k`` example normalised spectra (quantiles of the map) with their quadratic fits."""
    e = np.asarray(energies_keV, np.float64) * 1000.0
    flat = np.asarray(norm).reshape(len(e), -1)
    wl = np.asarray(wl_map, np.float64).ravel()
    fig = _figure((6.4, 4.2))
    ax = fig.add_subplot()
    ok = np.flatnonzero(np.isfinite(wl))
    if ok.size:
        order = ok[np.argsort(wl[ok])]
        picks = [order[int(q * (order.size - 1))] for q in np.linspace(0.1, 0.9, k)]
        lo, hi = window[0] * 1000.0, window[1] * 1000.0
        idx = np.flatnonzero((e >= lo) & (e <= hi))
        for p in picks:
            y = flat[:, p].astype(np.float64)
            (line,) = ax.plot(e, y, "o", ms=3, label=f"pixel {p}: {wl[p]:.2f} eV")
            # The fit fit_whiteline makes: stencil around the 3-point-mean maximum.
            yw = y[idx]
            m = np.convolve(yw, np.ones(3) / 3, mode="same")
            c = int(np.argmax(m))
            s = int(np.clip(c - n_points // 2, 0, max(0, idx.size - n_points)))
            st = idx[s : s + n_points]
            if st.size >= 3:
                coef = np.polyfit(e[st] - e[st].mean(), y[st], 2)
                xs = np.linspace(e[st][0], e[st][-1], 50)
                ax.plot(xs, np.polyval(coef, xs - e[st].mean()), "-", color=line.get_color())
            ax.axvline(wl[p], color=line.get_color(), lw=0.8, ls=":")
        ax.set_xlim(lo - 20, hi + 20)
        ax.legend(fontsize=7)
    ax.set_xlabel("energy (eV)")
    ax.set_ylabel("normalised absorbance")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
