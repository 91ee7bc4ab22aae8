"""Live analysis pipelines an instrument's session subscribes, as one callback each.

:class:`TomographyPipeline` (the TXM's) gives every tomography run a live preview and, at
its end, a full reconstruction stored as a derived run; reconstructions of
mosaic tiles also go to the mosaic stitcher, which stitches, labels particles
and stores its own derived run when the last tile is in. XANES runs
(``xanes_2d``, ``xanes_3d``) go to a
:class:`~multiscope.callbacks.xanes_2d.LiveXANESMap2D` or
:class:`~multiscope.callbacks.xanes_3d.LiveXANESMap3D` (live whiteline and edge
maps, a derived ``xanes_map`` run at the end). The session wraps the pipeline in a
:class:`~multiscope.callbacks.background.BackgroundCallback`, so none of this
runs on the RunEngine's thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path

from event_model import RunRouter

from .mosaic import MosaicStitcher
from .tomo import TOMO_PLANS, LiveTomoPreview, TomoReconstructor, tomo_factory
from .xanes import XanesMapBase, xanes_map_for

__all__ = ["KEEP_LAST", "TomographyPipeline", "tomography_pipeline"]

Publish = Callable[[str, dict], object]

# Finished reconstructions (and stitched mosaics) kept in memory by default: the
# latest to look at and the one before to compare with. Each holds its volume;
# all of them are on disk and in the catalog.
KEEP_LAST = 2


class TomographyPipeline:
    """Preview, reconstruction and stitching of tomography runs; live maps of XANES runs.

    Parameters
    ----------
    output_dir : Path
        Where derived files go (``recon/<raw uid>/``, ``mosaics/<mosaic id>/``,
        ``xanes/<raw uid>/``).
    publish : callable
        ``publish(name, doc)`` stores derived runs (the catalog writer).
    keep_last : int, optional
        How many reconstructions (each with its volume) and stitched mosaics stay in
        memory; older ones are dropped (their files and catalog runs stay). Settable
        while running, e.g. ``session.pipeline.callback.keep_last = 5``.
    dask_scheduler : str, optional
        ``dask.distributed`` scheduler address for the end-of-scan reconstructions
        and the stitching (:mod:`multiscope.compute`); default
        ``$MULTISCOPE_DASK_SCHEDULER`` if set, else this machine. Settable while
        running (``session.pipeline.callback.dask_scheduler = "tcp://host:8786"``);
        the next run uses it.

    Attributes
    ----------
    preview : LiveTomoPreview or None
        The preview of the latest tomography run (``preview.slices``).
    stitcher : MosaicStitcher
        Holds the last ``keep_last`` finished mosaics in ``stitcher.results``.
    reconstructions : deque of TomoReconstructor
        The last ``keep_last`` tomography runs', oldest first (``.uid``, ``.center``,
        ``.paths``, ``.volume``); ``reconstructions[-1]`` is the latest.
    xanes : LiveXANESMap2D or LiveXANESMap3D or None
        The map of the latest XANES run (``xanes.maps["whiteline_eV"]``, updated
        live; ``xanes.paths`` once stored). Only the latest is kept: a 2D map
        holds its run's absorbance stack.
    """

    def __init__(
        self,
        output_dir: Path,
        publish: Publish,
        *,
        keep_last: int = KEEP_LAST,
        dask_scheduler: str | None = None,
    ):
        output_dir = Path(output_dir)
        self.dask_scheduler = dask_scheduler
        self.preview: LiveTomoPreview | None = None
        self.reconstructions: deque[TomoReconstructor] = deque()
        self.xanes: XanesMapBase | None = None
        self._xanes_dir = output_dir / "xanes"
        self._publish = publish
        self.stitcher = MosaicStitcher(output_dir / "mosaics", publish=publish)
        self.keep_last = keep_last

        def publish_reconstruction(name: str, doc: dict) -> None:
            publish(name, doc)
            self.stitcher(name, doc)

        self._reconstructor = tomo_factory(
            TomoReconstructor, output_dir=output_dir / "recon", publish=publish_reconstruction
        )
        self._router = RunRouter(
            [self._preview_factory, self._reconstruction_factory, self._xanes_factory]
        )

    def _preview_factory(self, name: str, start: dict):
        if start.get("plan_name") not in TOMO_PLANS:
            return [], []
        self.preview = LiveTomoPreview()
        return [self.preview], []

    def _xanes_factory(self, name: str, start: dict):
        live = xanes_map_for(start, self._xanes_dir, publish=self._publish)
        if live is None:
            return [], []
        self.xanes = live
        return [live], []

    @property
    def keep_last(self) -> int:
        """How many reconstructions and stitched mosaics are kept in memory (at least 1)."""
        return self.reconstructions.maxlen

    @keep_last.setter
    def keep_last(self, value: int) -> None:
        value = int(value)
        if value < 1:
            raise ValueError(f"keep_last must be at least 1, not {value}")
        # A new deque keeps the newest; the one being reconstructed is always the newest.
        self.reconstructions = deque(self.reconstructions, maxlen=value)
        self.stitcher.keep_last = value

    def _reconstruction_factory(self, name: str, start: dict):
        callbacks, subfactories = self._reconstructor(name, start)
        for callback in callbacks:
            callback.dask_scheduler = self.dask_scheduler
        self.stitcher.dask_scheduler = self.dask_scheduler
        self.reconstructions.extend(callbacks)  # the oldest falls out, volume and all
        return callbacks, subfactories

    def __call__(self, name: str, doc: dict) -> None:
        self._router(name, doc)


def tomography_pipeline(
    output_dir: Path,
    publish: Publish,
    *,
    keep_last: int = KEEP_LAST,
    dask_scheduler: str | None = None,
) -> TomographyPipeline:
    """Factory named in an instrument's spec (``multiscope.session.INSTRUMENTS``)."""
    return TomographyPipeline(
        output_dir, publish, keep_last=keep_last, dask_scheduler=dask_scheduler
    )
