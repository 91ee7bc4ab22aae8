"""The live XANES map of a 3D run (``xanes_3d``): a tomogram per energy, maps per voxel.

Step or fly: fly frames come without events, ``num_frames`` per energy in order,
the angle in their HDF5 attribute (decision 0006).  Each energy's projections are
normalised by its flat field (the flat policy:
:class:`~multiscope.callbacks.xanes_base.XanesMapBase`), ``-log``-ed, registered
to the first energy's (drift: a row shift of the projections and a
rotation-centre shift, :mod:`multiscope.analysis.xanes_drift`), the rotation
centre is found once (first energy) and each energy is reconstructed
(:mod:`multiscope.analysis.tomo`) into an HDF5 file of volumes (attenuation in
1/um when the pixel size is known).  The live maps are those of the central
slice.  At the stop the same per-voxel fit runs slab by slab along z
(:func:`fit_volumes`).

Memory: while acquiring, one energy's projections ``(angles, ny, nx)`` and one
volume ``(ny, nx, nx)`` (float32) plus the central slice of every energy; the
final fit reads ``chunk_slices`` z-slices of every energy at a time
(``~16 * energies * chunk_slices * nx^2`` bytes with its temporaries) and writes
each slab's maps straight to the file, so the peak is set by ``memory_mb``
(default 512 MB), whatever the volume size.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence

import h5py
import numpy as np

from multiscope.analysis import xanes as xa
from multiscope.analysis import xanes_drift as xd
from multiscope.analysis.tomo import find_center, minus_log, reconstruct
from multiscope.callbacks.derived import qualified_name
from multiscope.callbacks.runs import FrameRecord
from multiscope.callbacks.tomo import THETA_ATTRIBUTE, structured_rows
from multiscope.callbacks.xanes_base import MAP_DATASETS, FrameSet, XanesMapBase, map_metrics

__all__ = ["LiveXANESMap3D", "fit_volumes"]

logger = logging.getLogger(__name__)


class LiveXANESMap3D(XanesMapBase):
    """Whiteline and edge-energy maps per voxel of a ``xanes_3d`` run, live and at its end.

    Parameters
    ----------
    output_dir, publish, n_points, live, reader_timeout
        As :class:`~multiscope.callbacks.xanes_base.XanesMapBase`.
    min_edge_jump_per_um : float
        Voxels whose edge step (attenuation, 1/um; per voxel without a pixel
        size) is below this are masked.
    chunk_slices : int, optional
        z-slices per slab of the final fit; default from ``memory_mb``.
    memory_mb : float
        Working-memory budget of the final fit.
    algorithm, filter_name : str
        Passed to :func:`~multiscope.analysis.tomo.reconstruct`.
    center : float, optional
        Rotation-axis column of the reference (first processed) energy; default:
        :func:`~multiscope.analysis.tomo.find_center` on it (the
        ``tomo.center_guess_px`` is not trusted).
    correct_drift : bool
        Estimate each energy's image shift against the first processed energy's
        projections (:func:`~multiscope.analysis.xanes_drift.register_projections`)
        and correct it before reconstructing: the column shift moves that energy's
        rotation centre, the row shift is applied to its projections.
    drift_angles : int
        Reference projections kept for the drift estimate (evenly spread).

    Attributes
    ----------
    maps : dict of str to ndarray
        Live: of the central slice; final: the volumes if they fit ``memory_mb``,
        else the central slice.
    center : float or None
        Rotation-axis column of the reference energy (px).
    """

    plans = ("xanes_3d",)
    kind = "3d"
    angle_attribute = THETA_ATTRIBUTE
    analysis_functions = (*XanesMapBase.analysis_functions, find_center, reconstruct)

    def __init__(
        self,
        output_dir: str | os.PathLike,
        publish: Callable[[str, dict], object] | None = None,
        *,
        min_edge_jump_per_um: float = 0.01,
        chunk_slices: int | None = None,
        memory_mb: float = 512.0,
        algorithm: str = "gridrec",
        filter_name: str = "shepp",
        center: float | None = None,
        correct_drift: bool = True,
        drift_angles: int = 32,
        n_points: int | None = None,
        live: bool = True,
        reader_timeout: float = 10.0,
    ) -> None:
        self.min_edge_jump_per_um = float(min_edge_jump_per_um)
        self.chunk_slices = chunk_slices
        self.memory_mb = float(memory_mb)
        self.algorithm = algorithm
        self.filter_name = filter_name
        self.fixed_center = center
        self.correct_drift = bool(correct_drift)
        self.drift_angles = int(drift_angles)
        super().__init__(
            output_dir, publish, n_points=n_points, live=live, reader_timeout=reader_timeout
        )

    def _reset(self) -> None:
        self._close_volumes()  # a run that never stopped
        super()._reset()
        self.center: float | None = None
        self._volumes: h5py.File | None = None
        self._volume_means: np.ndarray | None = None
        self._live_slices: np.ndarray | None = None
        # Fly runs (frames without events), drift across energies.
        self._fly = False
        self._frames_per_energy = 0
        self._drift_ref: xd.ProjectionReference | None = None
        self._drift_reference_index: int | None = None
        self._shifts_3d: np.ndarray | None = None
        self._angle_gap_rad = 0.0

    def run_started(self) -> None:
        super().run_started()
        self.angle_key = self.tomo.rotation
        # Fly tomograms (decision 0006): primary frames come without events, num_frames
        # per energy in energy order; the angle is the frames' HDF5 attribute.
        self._fly = self.tomo.is_fly
        self._frames_per_energy = int(self.xanes.num_frames or 0)
        if self._fly and self._frames_per_energy < 1:
            raise ValueError("a fly xanes_3d run needs xanes.num_frames (projections per energy)")
        self._shifts_3d = np.full((len(self.energies), 2), np.nan)

    # ------------------------------------------------------------------ documents
    def event_fields(self, stream: str) -> dict[str, str]:
        fields = super().event_fields(stream)
        if stream == "primary":
            fields["angle_deg"] = self.angle_key
        return fields

    def read_options(self, stream: str) -> dict:
        if self._fly and stream == "primary":
            return {"attributes": (THETA_ATTRIBUTE,)}
        return {}

    def frame_arrived(self, record: FrameRecord) -> None:
        if self._fly and record.stream == "primary" and record.energy_index is None:
            # Fly projections: the energy index from the sequence number (from 1).
            index = (record.seq_num - 1) // self._frames_per_energy
            self._add_frame("primary", index, record.frame, record.angle_deg)
            return
        super().frame_arrived(record)

    def run_stopped(self, doc: dict) -> None:
        try:
            super().run_stopped(doc)
        finally:
            self._close_volumes()

    # ------------------------------------------------------------------ energies
    def live_maps(self, done):
        return self._live_maps(self._live_slices, done, self._jump_3d())

    def _jump_3d(self) -> float:
        return self.min_edge_jump_per_um

    def process_energy(self, index: int, fs: FrameSet, flat: np.ndarray) -> None:
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

    def _slab_slices(self, shape) -> int:
        if self.chunk_slices:
            return max(1, int(self.chunk_slices))
        n_e, nz, ny, nx = shape
        per_slice = 16 * n_e * ny * nx  # float32 slab, normalised copy, fit temporaries
        return int(np.clip(self.memory_mb * 2**20 // per_slice, 1, nz))

    def finish(self) -> None:
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
        self.metrics = map_metrics(
            fitted["sample"],
            maps["edge_eV"][kept],
            maps["edge_jump"][kept],
            fitted["n_masked"] / float(nz * ny * nx),
            float(oov_rows.mean()),
            float(np.abs(done_shifts).max()) if done_shifts.size else 0.0,
            len(done),
        )
        self._figures(central, norm_c, e, hist=(fitted["counts"], fitted["bins"]))
        self.publish_map()

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

    def _close_volumes(self) -> None:
        if getattr(self, "_volumes", None) is not None:  # None before the first reset
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
