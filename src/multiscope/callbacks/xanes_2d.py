"""The live XANES map of a 2D run (``xanes_2d``): whiteline and edge-energy maps of one field.

Each energy's sample frames are normalised by that energy's flat field (the flat
policy: :class:`~multiscope.callbacks.xanes_base.XanesMapBase`), converted to
absorbance and registered to the first energy.  Once the whiteline window and two
pre-edge energies are in, every further energy updates the whiteline map (and,
with two post-edge energies, the edge-energy map): a vectorised fit of the
energies so far, milliseconds per update at 128 x 128 px, ~0.3 s at 1024 x 1024.
At a successful stop the full analysis runs:
:func:`~multiscope.analysis.xanes.align_stack` to the reference energy with the
re-sampling (partial-volume) correction, normalisation, a significance mask
(:func:`~multiscope.analysis.xanes.material_mask`), whiteline and edge fits; the
result is stored as a derived run (:mod:`multiscope.callbacks.xanes`).

Memory: the absorbance stack ``(energies, ny, nx)`` float32 (240 MB for 60
energies of 1024 x 1024) and, during the final alignment, a few copies of it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import h5py
import numpy as np

from multiscope.analysis import xanes as xa
from multiscope.analysis.tomo import minus_log
from multiscope.callbacks.xanes_base import MAP_DATASETS, FrameSet, XanesMapBase, map_metrics

__all__ = ["LiveXANESMap2D"]

# A pixel whose step passes min_edge_jump still needs this significance (rim scatter).
_MIN_STEP_SIGNIFICANCE = 1.0


class LiveXANESMap2D(XanesMapBase):
    """Whiteline and edge-energy maps of a ``xanes_2d`` run, live and at its end.

    Parameters
    ----------
    output_dir, publish, n_points, live, reader_timeout
        As :class:`~multiscope.callbacks.xanes_base.XanesMapBase`.
    reference_index : int
        Energy whose image defines the frame of the final maps (default -1: the
        last, a post-edge energy, whose contrast is that of the structure model).
    min_edge_jump : float
        Live maps mask pixels whose edge step (absorbance) is below this; the
        final map keeps a pixel whose step is at least this (and above its scatter)
        if it connects to certain material (:func:`~multiscope.analysis.xanes.material_mask`).
    significance : tuple of float
        Final map: ``(low, high)`` significance (edge step / its standard error
        from the pixel's pre/post-edge scatter) of possible and certain material;
        possible pixels connected to certain ones are kept, the rest masked.
    correct_resampling : bool
        Correct the partial-volume error of sub-pixel re-sampling
        (:func:`~multiscope.analysis.xanes.align_stack` with ``structure`` = the
        post-edge energies, ``related`` = the whiteline and post-edge energies).

    Attributes
    ----------
    maps : dict of str to ndarray
        As the base; the final maps add ``edge_jump_error``.
    aligned : ndarray or None
        After the run: the aligned, re-sampling-corrected absorbance stack
        ``(energies processed, ny, nx)``.
    """

    plans = ("xanes_2d",)
    kind = "2d"

    def __init__(
        self,
        output_dir: str | os.PathLike,
        publish: Callable[[str, dict], object] | None = None,
        *,
        reference_index: int = -1,
        min_edge_jump: float = 0.03,
        significance: tuple[float, float] = (6.0, 8.0),
        correct_resampling: bool = True,
        n_points: int | None = None,
        live: bool = True,
        reader_timeout: float = 10.0,
    ) -> None:
        self.reference_index = reference_index
        self.min_edge_jump = float(min_edge_jump)
        self.significance = (float(significance[0]), float(significance[1]))
        self.correct_resampling = correct_resampling
        super().__init__(
            output_dir, publish, n_points=n_points, live=live, reader_timeout=reader_timeout
        )

    def _reset(self) -> None:
        super()._reset()
        self._absorbance: np.ndarray | None = None
        self._live_aligned: np.ndarray | None = None
        self._live_shifts: np.ndarray | None = None
        self._live_ref: np.ndarray | None = None
        self.aligned: np.ndarray | None = None

    def process_energy(self, index: int, fs: FrameSet, flat: np.ndarray) -> None:
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

    def live_maps(self, done):
        return self._live_maps(
            self._live_aligned, done, self.min_edge_jump, shifts=self._live_shifts
        )

    def finish(self) -> None:
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
        self.metrics = map_metrics(
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
        self.publish_map()
