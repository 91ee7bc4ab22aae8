"""The part of the live XANES maps that 2D and 3D runs share: frames to per-energy sets.

:class:`XanesMapBase` reads a XANES run's documents (decision 0006) through
:class:`~multiscope.callbacks.runs.RunFrames` and its ``xanes`` block through
:class:`~multiscope.contracts.XanesBlock`: darks are averaged; each energy's flat
and sample frames are collected by their energy index; once an energy's frames
and the flats its policy needs are in (``every``: its own; ``every_n``: the
nearest set in energy; ``interpolate``: the sets before and after, linearly in
energy), the subclass processes it (:meth:`XanesMapBase.process_energy`), and
the live maps are updated from the energies so far.  At a successful stop the
subclass's :meth:`XanesMapBase.finish` makes the final maps, and
:meth:`XanesMapBase.publish_map` stores them as a derived run
(:mod:`multiscope.callbacks.derived`).

:class:`~multiscope.callbacks.xanes_2d.LiveXANESMap2D` and
:class:`~multiscope.callbacks.xanes_3d.LiveXANESMap3D` are the two maps;
:mod:`multiscope.callbacks.xanes` documents their outputs.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from multiscope.analysis import xanes as xa
from multiscope.analysis.tomo import minus_log, normalize
from multiscope.callbacks.derived import provenance, publish_derived_run
from multiscope.callbacks.runs import FrameRecord, RunFrames
from multiscope.callbacks.xanes_figures import (
    histogram_figure,
    spectra_figure,
    whiteline_map_figure,
)
from multiscope.contracts import TomoBlock, XanesBlock
from multiscope.plan_stubs.xanes import flat_indices

__all__ = ["MAP_DATASETS", "XANES_PLANS", "FrameSet", "XanesMapBase", "map_metrics"]

logger = logging.getLogger(__name__)

XANES_PLANS = ("xanes_2d", "xanes_3d")
MAP_DATASETS = ("whiteline_eV", "edge_eV", "mask", "shifts_px", "out_of_view", "edge_jump")


class FrameSet:
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


class XanesMapBase(RunFrames):
    """Whiteline and edge-energy maps of a XANES run, live and at its end (2D or 3D).

    Parameters
    ----------
    output_dir : path-like
        Results go to ``<output_dir>/<raw uid>/``: ``maps.h5``, ``whiteline_map.png``,
        ``whiteline_histogram.png``, ``spectra.png`` (3D also ``volumes.h5``).
    publish : callable, optional
        ``publish(name, doc)`` receives the derived run's documents (e.g. the
        catalog writer).
    n_points : int, optional
        Whiteline stencil (odd); default: the points spanning +-2 eV on the grid's
        median step inside the whiteline window (9 for 0.5 eV, 5 for 1 eV).
    live : bool
        Update the maps while the run is acquired.
    reader_timeout : float
        Seconds to wait for frames the writer has not flushed yet.

    Attributes
    ----------
    xanes : XanesBlock
        The run's ``xanes`` block; ``md`` the same as a dict (data-key defaults filled
        in), as the derived run records it; ``tomo`` the ``tomo`` block (3D).
    maps : dict of str to ndarray
        Latest maps: ``whiteline_eV``, ``edge_eV``, ``mask``, ``shifts_px``,
        ``out_of_view``, ``edge_jump``.
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
    """

    #: ``"2d"`` or ``"3d"``, recorded in the parameters.
    kind = "2d"
    #: The analysis functions the provenance names (3D adds the reconstruction's).
    analysis_functions: tuple = (
        normalize,
        minus_log,
        xa.align_stack,
        xa.normalize,
        xa.fit_whiteline,
        xa.edge_energy,
    )

    def __init__(
        self,
        output_dir: str | os.PathLike,
        publish: Callable[[str, dict], object] | None = None,
        *,
        n_points: int | None = None,
        live: bool = True,
        reader_timeout: float = 10.0,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.publish = publish
        self.fixed_n_points = n_points
        self.live = live
        self._listeners: list[Callable[[dict, int], object]] = []
        super().__init__(reader_timeout=reader_timeout)

    def on_update(self, callback: Callable[[dict, int], object]) -> None:
        """Call ``callback(maps, n_energies)`` after every map update (live and final)."""
        self._listeners.append(callback)

    # ------------------------------------------------------------------ run state
    def _reset(self) -> None:
        super()._reset()
        self.xanes = XanesBlock()
        self.tomo = TomoBlock()
        self.md: dict = {}
        self.tomo_md: dict = {}
        self.energies = np.zeros(0)
        self.maps: dict[str, np.ndarray] = {}
        self.energies_done: list[int] = []
        self.history: list[dict] = []
        self.uid: str | None = None
        self.raw_uid: str | None = None
        self.paths: dict[str, Path] = {}
        self.metrics: dict[str, float] = {}
        self.parameters: dict = {}
        self._sets: dict[tuple[str, int], FrameSet] = {}
        self._dark = FrameSet(keep=False)
        self._last_key: tuple[str, int] | None = None
        self._flat_notes: dict[int, str] = {}
        self._missing_warned = False

    def accepts(self, start_doc: dict) -> bool:
        return start_doc.get("plan_name") in self.plans and "xanes" in start_doc

    def run_started(self) -> None:
        doc = self.start_doc
        self.raw_uid = doc["uid"]
        self.xanes = XanesBlock.from_md(doc["xanes"])
        defaults = XanesBlock()
        self.md = {
            "image_field": defaults.image_field,
            "energy_field": defaults.energy_field,
            "energy_index_field": defaults.energy_index_field,
            **dict(doc["xanes"]),
        }
        self.tomo_md = dict(doc.get("tomo") or {})
        self.tomo = TomoBlock.from_md(self.tomo_md)
        self.camera_key = self.xanes.image_field
        self.energies = np.asarray(self.xanes.energies_keV, dtype=np.float64)
        if np.any(np.diff(self.energies) <= 0):
            raise ValueError("xanes.energies_keV must be strictly increasing")
        self.pre = tuple(float(v) for v in self.xanes.pre_edge_keV)
        self.post = tuple(float(v) for v in self.xanes.post_edge_keV)
        self.window = tuple(float(v) for v in self.xanes.whiteline_keV)
        self.n_points = self.fixed_n_points or _stencil(self.energies, self.window)
        policy = self.xanes.flat_policy
        try:
            self._expected_flats = set(
                flat_indices(len(self.energies), policy, self.xanes.flat_every)
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

    # ------------------------------------------------------------------ documents
    def event_fields(self, stream: str) -> dict[str, str]:
        if stream in ("flat", "primary"):
            return {"energy_index": self.xanes.energy_index_field}
        return {}

    def frame_arrived(self, record: FrameRecord) -> None:
        index = 0 if record.stream == "dark" else record.energy_index
        self._add_frame(record.stream, index, record.frame, record.angle_deg)

    def frames_done(self) -> None:
        self._advance()

    def run_stopped(self, doc: dict) -> None:
        if self.frames_waiting:
            logger.warning(
                "xanes run %s: %d frames never got their energy index",
                self.raw_uid,
                self.frames_waiting,
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
        self.finish()

    # ------------------------------------------------------------------ subclass hooks
    def process_energy(self, index: int, frame_set: FrameSet, flat: np.ndarray) -> None:
        """Process one complete energy (its sample frames, its dark-subtracted flat)."""
        raise NotImplementedError

    def live_maps(self, done: list[int]) -> dict | None:
        """Maps from the energies ``done`` so far (None: nothing to show yet)."""
        raise NotImplementedError

    def finish(self) -> None:
        """Final maps, outputs and derived run, after a successful stop."""
        raise NotImplementedError

    # ------------------------------------------------------------------ frames -> sets
    def _add_frame(self, stream: str, index: int, frame, angle) -> None:
        if stream == "dark":
            self._dark.add(frame)
            n = int(self.xanes.num_darks or 0)
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
            fs = self._sets[key] = FrameSet(keep=self.kind == "3d" and stream == "primary")
        elif fs.sealed:
            logger.warning(
                "xanes run %s: late %s frame of energy %d ignored", self.raw_uid, stream, index
            )
            return
        fs.add(frame, angle)
        if self.kind == "2d":
            n = int((self.xanes.num_frames if stream == "primary" else self.xanes.num_flats) or 0)
            if n and fs.count >= n:
                fs.sealed = True

    def _advance(self, final: bool = False) -> None:
        """Process every complete energy whose dark and flats are available."""
        if not self._dark.sealed and int(self.xanes.num_darks or 0) > 0:
            return
        processed = False
        for (stream, index), fs in sorted(self._sets.items(), key=lambda kv: kv[0][1]):
            if stream != "primary" or not fs.sealed or index in self.energies_done:
                continue
            flat = self._flat_for(index, final)
            if flat is None:
                continue
            self.process_energy(index, fs, flat)
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
        policy = self.xanes.flat_policy
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

    def _pixel_um(self) -> float | None:
        value = self.xanes.pixel_size_um or self.tomo.pixel_size_um
        return float(value) if value else None

    # ------------------------------------------------------------------ live maps
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
        self._set_maps(self.live_maps(done), len(done), final=False)

    def _set_maps(self, maps: dict, n: int, final: bool) -> None:
        self.maps = maps
        self.history.append({"n_energies": n, "final": final, "time": time.time()})
        for callback in self._listeners:
            callback(maps, n)

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
            "flat_policy": self.xanes.flat_policy,
            "flat_every": self.xanes.flat_every,
            "flat_used": {str(i): self._flat_notes.get(i, "") for i in done},
            "num_darks_used": int(self._dark.count),
            "pixel_size_um": self._pixel_um(),
        }

    def _figures(self, wl_map, norm, e, hist) -> None:
        pixel_um = self._pixel_um()
        title = self.start_doc.get("sample_id") or self.xanes.sample_id or self.raw_uid[:8]
        edge = self.xanes.edge or ""
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

    def publish_map(self) -> None:
        """Publish the derived run of the map (``plan_name="xanes_map"``) through ``publish``."""
        start = self.start_doc
        md = {
            "plan_name": "xanes_map",
            "derived_from": self.raw_uid,
            "sample_id": start.get("sample_id", self.xanes.sample_id or ""),
            "xanes": self.md,
            "parameters": self.parameters,
            **provenance(self.analysis_functions),
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
        self.uid = publish_derived_run(self.publish, md, scalars=self.metrics)


# ---------------------------------------------------------------------- helpers
def _stencil(energies: np.ndarray, window: tuple[float, float]) -> int:
    """Odd number of points spanning ~4 eV (+-2 eV) on the grid's step in ``window``."""
    inside = energies[(energies >= window[0]) & (energies <= window[1])]
    if inside.size < 4:
        return 3
    step = float(np.median(np.diff(inside)))
    n = 2 * int(round(0.002 / step)) + 1
    return int(np.clip(n, 3, inside.size if inside.size % 2 else inside.size - 1))


def map_metrics(wl, edge, jump, masked, out_of_view, max_shift, n_energies) -> dict[str, float]:
    """The scalars of a map's derived event (medians, spreads, fractions; NaN when empty)."""
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
