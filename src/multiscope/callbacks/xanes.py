"""Live chemical-state maps of XANES runs: whiteline and edge-energy maps as energies arrive.

The maps consume the documents of a XANES run exactly as decision 0006
(``docs/decisions/0006-xanes-run-documents.md``) describes them, so they work
live and on a run replayed from the catalog alike:

:class:`~multiscope.callbacks.xanes_2d.LiveXANESMap2D` (``xanes_2d``)
    a map of one field: absorbance per energy, registered, fitted live and
    again, aligned with the re-sampling correction, at the stop.
:class:`~multiscope.callbacks.xanes_3d.LiveXANESMap3D` (``xanes_3d``, step or fly)
    a tomogram per energy, drift-corrected and reconstructed as it completes;
    live maps of the central slice, per-voxel maps at the stop.

Both rest on :class:`~multiscope.callbacks.xanes_base.XanesMapBase` (frames to
per-energy sets, flat policies, live updates, the derived run), itself a
:class:`~multiscope.callbacks.runs.RunFrames` (documents to frame records).
:class:`LiveXANESMap` is the one object to subscribe for every XANES run: it
makes the map the run's plan needs at each start, and :func:`xanes_factory`
does the same for a :class:`event_model.RunRouter`.

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

import inspect
import os
from collections.abc import Callable

from multiscope.callbacks.xanes_2d import LiveXANESMap2D
from multiscope.callbacks.xanes_3d import LiveXANESMap3D, fit_volumes
from multiscope.callbacks.xanes_base import XANES_PLANS, XanesMapBase
from multiscope.callbacks.xanes_figures import (
    histogram_figure,
    spectra_figure,
    whiteline_map_figure,
)

__all__ = [
    "MAP_CLASSES",
    "XANES_PLANS",
    "LiveXANESMap",
    "LiveXANESMap2D",
    "LiveXANESMap3D",
    "fit_volumes",
    "histogram_figure",
    "spectra_figure",
    "whiteline_map_figure",
    "xanes_factory",
    "xanes_map_for",
]

#: The map class of each XANES plan.
MAP_CLASSES: dict[str, type[XanesMapBase]] = {
    "xanes_2d": LiveXANESMap2D,
    "xanes_3d": LiveXANESMap3D,
}


def _options_of(cls: type, options: dict) -> dict:
    """The keywords of ``options`` that ``cls`` takes (the others are the other map's)."""
    accepted = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in options.items() if k in accepted}


def _check_options(options: dict) -> None:
    known = set()
    for cls in MAP_CLASSES.values():
        known |= set(inspect.signature(cls.__init__).parameters)
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown XANES map option(s): {', '.join(unknown)}")


def xanes_map_for(
    start_doc: dict, output_dir: str | os.PathLike, publish=None, **options
) -> XanesMapBase | None:
    """A fresh map for the run of ``start_doc`` (None if it is not a XANES run).

    ``options`` may hold both maps' keywords; each map takes its own.
    """
    cls = MAP_CLASSES.get(start_doc.get("plan_name"))
    if cls is None:
        return None
    return cls(output_dir, publish, **_options_of(cls, options))


def xanes_factory(**kwargs) -> Callable:
    """A :class:`event_model.RunRouter` factory giving each XANES run a fresh map.

    Parameters
    ----------
    **kwargs
        ``output_dir`` (required), ``publish`` and the maps' options, as
        :class:`LiveXANESMap`.
    """
    _check_options({k: v for k, v in kwargs.items() if k not in ("output_dir", "publish")})

    def factory(name, start_doc):
        live = xanes_map_for(start_doc, **kwargs)
        return ([live], []) if live is not None else ([], [])

    return factory


class LiveXANESMap:
    """The map of every XANES run it is subscribed to, 2D or 3D by the run's plan.

    At each ``start`` it makes a fresh :class:`LiveXANESMap2D` or
    :class:`LiveXANESMap3D` (a run of another plan leaves an idle 2D map), passes
    it the documents and answers for it: ``live.maps``, ``live.paths``,
    ``live.uid``... are the current map's.

    Parameters
    ----------
    output_dir : path-like
        As the maps.
    publish : callable, optional
        ``publish(name, doc)`` receives the derived run's documents.
    **options
        Keywords of either map (each takes its own), e.g. ``min_edge_jump`` (2D),
        ``chunk_slices`` (3D), ``n_points``, ``live``.
    """

    def __init__(self, output_dir: str | os.PathLike, publish=None, **options) -> None:
        _check_options(options)
        self._output_dir = output_dir
        self._publish = publish
        self._options = options
        self._listeners: list[Callable[[dict, int], object]] = []
        self.current: XanesMapBase = self._new(LiveXANESMap2D)

    def _new(self, cls: type[XanesMapBase]) -> XanesMapBase:
        live = cls(self._output_dir, self._publish, **_options_of(cls, self._options))
        for callback in self._listeners:
            live.on_update(callback)
        return live

    def on_update(self, callback: Callable[[dict, int], object]) -> None:
        """Call ``callback(maps, n_energies)`` after every map update, for every run."""
        self._listeners.append(callback)
        self.current.on_update(callback)

    def __call__(self, name: str, doc: dict):
        if name == "start":
            self.current = self._new(MAP_CLASSES.get(doc.get("plan_name"), LiveXANESMap2D))
        return self.current(name, doc)

    def __getattr__(self, name: str):
        # Only for what this object does not have itself: the current map's state.
        if name.startswith("__") or name == "current":
            raise AttributeError(name)
        return getattr(self.current, name)
