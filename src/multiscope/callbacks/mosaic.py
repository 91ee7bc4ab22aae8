"""Stitch the tiles of a vertical mosaic tomography as their reconstructions arrive.

:class:`MosaicStitcher` listens to the documents of the derived
``tomo_reconstruction`` runs that :class:`~multiscope.callbacks.tomo.TomoReconstructor`
publishes (their start carries the raw run's ``mosaic`` and ``tomo`` blocks; their
``volume`` is referenced in ``recon.h5``). Tiles are grouped by ``mosaic_id``;
when the last of ``num_tiles`` has arrived it

1. orders the tiles by stage height ``z_um`` (a higher stage lifts the sample,
   so the detector sees a lower part of it: ascending ``z_um`` is top to bottom,
   increasing row index, as :func:`~multiscope.analysis.stitch.stitch_vertical`
   expects),
2. stitches them with a nominal overlap of
   ``overlap_fraction * tile_height_um / pixel_size_um`` slices,
3. writes ``<output_dir>/mosaic_<mosaic_id>/stitched.h5`` and an orthogonal-slices PNG,
4. labels the particles (:func:`~multiscope.analysis.segment.label_particles`, inside
   the cylinder every projection saw) and writes ``particles.csv`` and a histogram
   PNG of their equivalent diameters (um),
5. publishes a derived run ``plan_name: "mosaic_stitch"`` through ``publish``.

Wiring, with the reconstructor on a worker thread::

    stitcher = MosaicStitcher(output_dir, publish=catalog_writer)

    def publish(name, doc):
        catalog_writer(name, doc)
        stitcher(name, doc)

    RE.subscribe(BackgroundCallback(TomoReconstructor(output_dir, publish=publish)))

Derived run
-----------
``start``
    ``plan_name="mosaic_stitch"``, ``derived_from=[raw uids, top to bottom]``,
    ``reconstructions=[derived uids]``, ``mosaic_id``, ``num_tiles``,
    ``parameters`` (``overlap_px``, ``pixel_size_um``, ``order``, ``lateral``,
    ``segmentation``), ``software``, ``analysis_functions``, ``figures``, ``files``.
``primary`` (one event)
    ``volume`` (``external="STREAM:"``, ``[1, Z, y, x]`` in ``stitched.h5``),
    ``particle_count``, ``mean_diameter_um``, ``max_offset_deviation_vox`` (largest
    difference between a measured and a nominal z offset). The per-tile offsets
    are in the start document's ``results`` (``offsets_vox``, ``[n_tiles, 3]``, z/y/x
    relative to the first tile; ``nominal_offsets_vox`` from the stage heights):
    the catalog's event tables hold scalars only.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from event_model import DocumentRouter

from multiscope import compute
from multiscope.analysis.segment import label_particles, size_histogram
from multiscope.analysis.stitch import stitch_vertical
from multiscope.callbacks.derived import provenance, publish_derived_run
from multiscope.callbacks.tomo import write_volume
from multiscope.contracts import MosaicBlock, TomoBlock
from multiscope.frame_files import FrameReader

__all__ = ["MosaicStitcher", "Tile", "orthogonal_slices_figure", "size_histogram_figure"]

logger = logging.getLogger(__name__)

SOURCE_PLAN = "tomo_reconstruction"


@dataclass(frozen=True)
class Tile:
    """One reconstructed tile of a mosaic.

    Attributes
    ----------
    raw_uid, recon_uid : str
        Uid of the tomography run and of its derived reconstruction run.
    mosaic : dict
        The raw run's ``mosaic`` block.
    pixel_size_um : float or None
        Voxel size.
    volume : ndarray
        Reconstruction, ``(z, y, x)``.
    center_px : float or None
        Detector column of the rotation axis the reconstruction used (its slices
        are centred on it): with the detector width it sets the radius every
        projection saw.
    """

    raw_uid: str
    recon_uid: str
    mosaic: dict
    pixel_size_um: float | None
    volume: np.ndarray
    center_px: float | None = None

    def seen_radius(self) -> float:
        """Radius (voxels) of the cylinder every projection of this tile saw."""
        cols = self.volume.shape[-1]
        if self.center_px is None or not np.isfinite(self.center_px):
            return cols / 2 - 1
        return float(min(self.center_px, cols - 1 - self.center_px))


class _RunCollector:
    """Documents of one derived reconstruction run -> :class:`Tile` at its stop."""

    def __init__(self, start: dict, volume_key: str) -> None:
        self.start = start
        self.volume_key = volume_key
        self.frames = FrameReader(timeout=10.0)
        self.volume: np.ndarray | None = None

    def tile(self) -> Tile | None:
        if self.volume is None:
            return None
        pixel = (self.start.get("parameters") or {}).get("pixel_size_um")
        if pixel is None:
            pixel = TomoBlock.from_md(self.start.get("tomo")).pixel_size_um
        return Tile(
            raw_uid=self.start["derived_from"],
            recon_uid=self.start["uid"],
            mosaic=dict(self.start["mosaic"]),
            pixel_size_um=float(pixel) if pixel else None,
            volume=self.volume,
            center_px=(self.start.get("parameters") or {}).get("center_px"),
        )


class MosaicStitcher(DocumentRouter):
    """Collect reconstructed tiles by ``mosaic_id``; stitch and analyse the complete mosaic.

    Parameters
    ----------
    output_dir : path-like
        Results go to ``<output_dir>/mosaic_<mosaic_id>/``.
    publish : callable, optional
        ``publish(name, doc)`` receives the derived ``mosaic_stitch`` run.
    lateral : bool, optional
        Also measure lateral (y, x) shifts between tiles.
    min_size : int, optional
        Smallest particle in voxels (:func:`~multiscope.analysis.segment.label_particles`).
    min_distance : int, optional
        Minimum distance between particle seeds (voxels).
    fov_margin : float, optional
        Voxels kept clear of the edge of the cylinder every projection saw:
        particles reaching closer than this to it are dropped. Where the sample
        is wider than the field of view, local tomography also brightens the
        outer ~6 voxels (the truncation rim): scores against ground truth count
        only particles clear of it (``multiscope.demos.tomo``).
    keep_last : int, optional
        How many finished mosaics ``results`` keeps (each holds its stitched
        volume); None keeps every one. Their files and catalog runs stay.
    dask_scheduler : str, optional
        ``dask.distributed`` scheduler on which the neighbouring tiles are
        registered, one task per pair (:func:`multiscope.compute.stitch_vertical`);
        default ``$MULTISCOPE_DASK_SCHEDULER`` if set, else here; ``""``: here.

    Attributes
    ----------
    results : dict of str to dict
        Per ``mosaic_id``, the last ``keep_last`` finished: ``volume``, ``offsets``,
        ``table`` (particles), ``paths``, ``uid`` (of the derived run), ``tiles``
        (raw uids in stitch order).
    pending : dict of str to dict
        Tiles received per ``mosaic_id`` (by tile index) while the mosaic is incomplete.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        publish: Callable[[str, dict], object] | None = None,
        *,
        lateral: bool = True,
        min_size: int = 20,
        min_distance: int = 3,
        fov_margin: float = 2.0,
        keep_last: int | None = None,
        dask_scheduler: str | None = None,
    ) -> None:
        super().__init__()
        self.dask_scheduler = dask_scheduler
        self.output_dir = Path(output_dir)
        self.publish = publish
        self.lateral = lateral
        self.min_size = min_size
        self.min_distance = min_distance
        self.fov_margin = fov_margin
        self.pending: dict[str, dict[int, Tile]] = {}
        self.results: dict[str, dict] = {}
        self.keep_last = keep_last
        self._runs: dict[str, _RunCollector] = {}
        self._run_of_descriptor: dict[str, str] = {}
        self._run_of_resource: dict[str, str] = {}

    # -- documents (several runs may interleave) -----------------------------------------
    def start(self, doc):
        if doc.get("plan_name") == SOURCE_PLAN and doc.get("mosaic"):
            self._runs[doc["uid"]] = _RunCollector(doc, "volume")

    def descriptor(self, doc):
        run = self._runs.get(doc.get("run_start"))
        if run is not None:
            self._run_of_descriptor[doc["uid"]] = doc["run_start"]
            run.frames.add_descriptor(doc)

    def stream_resource(self, doc):
        run = self._runs.get(doc.get("run_start"))
        if run is not None and doc.get("data_key") == run.volume_key:
            self._run_of_resource[doc["uid"]] = doc["run_start"]
            run.frames.add_resource(doc)

    def stream_datum(self, doc):
        run = self._runs.get(self._run_of_resource.get(doc["stream_resource"]))
        if run is not None:
            block = run.frames.read(doc)
            run.volume = np.asarray(block.data[0], np.float32)

    def stop(self, doc):
        run = self._runs.pop(doc["run_start"], None)
        if run is None:
            return
        run.frames.close()
        self._run_of_descriptor = {
            k: v for k, v in self._run_of_descriptor.items() if v != doc["run_start"]
        }
        self._run_of_resource = {
            k: v for k, v in self._run_of_resource.items() if v != doc["run_start"]
        }
        tile = run.tile() if doc.get("exit_status") == "success" else None
        if tile is None:
            logger.warning("mosaic: reconstruction %s gave no volume", doc["run_start"])
            return
        self.add_tile(tile)

    # -- tiles ---------------------------------------------------------------------------
    def add_tile(self, tile: Tile) -> None:
        """Add one reconstructed tile; stitch when its mosaic is complete."""
        block = MosaicBlock.from_md(tile.mosaic)
        mosaic_id = block.mosaic_id
        group = self.pending.setdefault(mosaic_id, {})
        index = int(block.tile_index)
        if index in group:
            logger.warning(
                "mosaic %s: tile %d received again; the latest is kept", mosaic_id, index
            )
        group[index] = tile
        num_tiles = int(block.num_tiles)
        logger.info("mosaic %s: tile %d (%d of %d)", mosaic_id, index, len(group), num_tiles)
        if len(group) >= num_tiles:
            tiles = list(self.pending.pop(mosaic_id).values())
            self.results.pop(mosaic_id, None)  # a re-stitched mosaic counts as the newest
            self.results[mosaic_id] = self.stitch(mosaic_id, tiles)
            self._drop_old_results()

    @property
    def keep_last(self) -> int | None:
        """How many finished mosaics ``results`` keeps (None: all)."""
        return self._keep_last

    @keep_last.setter
    def keep_last(self, value: int | None) -> None:
        if value is not None and int(value) < 1:
            raise ValueError(f"keep_last must be at least 1 or None, not {value}")
        self._keep_last = None if value is None else int(value)
        self._drop_old_results()

    def _drop_old_results(self) -> None:
        while self._keep_last is not None and len(self.results) > self._keep_last:
            del self.results[next(iter(self.results))]  # the oldest, volume and all

    def stitch(self, mosaic_id: str, tiles: list[Tile]) -> dict:
        """Stitch, segment, write and publish one complete mosaic; returns the result."""
        blocks = {id(t): MosaicBlock.from_md(t.mosaic) for t in tiles}
        tiles = sorted(tiles, key=lambda t: float(blocks[id(t)].z_um))
        pixel = next((t.pixel_size_um for t in tiles if t.pixel_size_um), None)
        m = blocks[id(tiles[0])]
        n_rows = tiles[0].volume.shape[0]
        if pixel and m.tile_height_um:
            overlap_px = float(m.overlap_fraction) * float(m.tile_height_um) / pixel
        else:
            overlap_px = float(m.overlap_fraction) * n_rows
        overlap_px = max(2, int(round(overlap_px)))
        z_um = np.array([float(blocks[id(t)].z_um) for t in tiles])
        nominal = (z_um - z_um[0]) / pixel if pixel else np.full(len(tiles), np.nan)

        volume, offsets = compute.stitch_vertical(
            [t.volume for t in tiles],
            overlap_px,
            lateral=self.lateral,
            scheduler=self.dask_scheduler,
        )
        logger.info("mosaic %s: offsets %s (nominal %s)", mosaic_id, offsets[:, 0], nominal)

        out_dir = self.output_dir / f"mosaic_{mosaic_id}"
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {
            "volume": out_dir / "stitched.h5",
            "slices_figure": out_dir / "stitched_slices.png",
            "histogram_figure": out_dir / "particle_sizes.png",
            "particles": out_dir / "particles.csv",
        }
        write_volume(
            paths["volume"],
            volume,
            {
                "mosaic_id": mosaic_id,
                "pixel_size_um": float(pixel) if pixel else float("nan"),
                "units": "attenuation per pixel",
            },
            offsets_vox=offsets,
        )
        orthogonal_slices_figure(paths["slices_figure"], volume, pixel, title=f"mosaic {mosaic_id}")

        radius = min(tile.seen_radius() for tile in tiles)
        labels, table = self.particles(volume, pixel, radius)
        diam = table["equivalent_diameter"]
        write_table(paths["particles"], table)
        size_histogram_figure(paths["histogram_figure"], diam, "um" if pixel else "voxels")
        count = int(len(table["label"]))
        mean_d = float(np.mean(diam)) if count else float("nan")

        md = {
            "plan_name": "mosaic_stitch",
            "derived_from": [t.raw_uid for t in tiles],
            "reconstructions": [t.recon_uid for t in tiles],
            "mosaic_id": mosaic_id,
            "num_tiles": len(tiles),
            "parameters": {
                "overlap_px": overlap_px,
                "pixel_size_um": pixel,
                "order": "ascending z_um (top to bottom)",
                "lateral": self.lateral,
                "segmentation": {
                    "min_size": self.min_size,
                    "min_distance": self.min_distance,
                    "fov_margin": self.fov_margin,
                    "threshold": "otsu",
                },
            },
            **provenance((stitch_vertical, label_particles, size_histogram)),
            "figures": [str(paths["slices_figure"]), str(paths["histogram_figure"])],
            "files": {"volume": str(paths["volume"]), "particles": str(paths["particles"])},
            "results": {
                "offsets_vox": np.asarray(offsets).tolist(),
                "nominal_offsets_vox": np.asarray(nominal).tolist(),
            },
        }
        uid = publish_derived_run(
            self.publish,
            md,
            volume_path=paths["volume"],
            volume_shape=volume.shape,
            scalars={
                "particle_count": count,
                "mean_diameter_um": mean_d,
                "max_offset_deviation_vox": float(np.max(np.abs(offsets[:, 0] - nominal))),
            },
        )
        return {
            "volume": volume,
            "offsets": offsets,
            "nominal_offsets": nominal,
            "labels": labels,
            "table": table,
            "paths": paths,
            "uid": uid,
            "tiles": [t.raw_uid for t in tiles],
        }

    def particles(self, volume: np.ndarray, pixel_um: float | None, radius: float | None = None):
        """Label particles inside the cylinder every projection saw, clear of its rim.

        Parameters
        ----------
        volume : ndarray, shape (z, y, x)
            Stitched volume; slices centred on the rotation axis.
        pixel_um : float or None
            Voxel size.
        radius : float, optional
            Radius (voxels) of the cylinder every projection saw; default the
            inscribed circle. Outside it the reconstruction holds streaks, not
            measurements: only voxels within ``radius - fov_margin`` are
            segmented, and particles touching that boundary are dropped.
        """
        nz, ny, nx = volume.shape
        if radius is None:
            radius = min(ny, nx) / 2 - 1
        yy, xx = np.ogrid[:ny, :nx]
        inside = np.hypot(yy - ny // 2, xx - nx // 2) <= radius - self.fov_margin
        labels, table = label_particles(
            volume,
            min_size=self.min_size,
            min_distance=self.min_distance,
            voxel_size=pixel_um,
            mask=np.broadcast_to(inside, volume.shape),
        )
        return labels, table


def write_table(path, table: dict) -> None:
    """Write a particle table (dict of equal-length arrays) as CSV."""
    keys = list(table)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(keys)
        for row in zip(*(np.asarray(table[k]).tolist() for k in keys), strict=True):
            writer.writerow(row)


def orthogonal_slices_figure(path, volume, pixel_um=None, *, title="", dpi=110) -> None:
    """PNG of the central z, y and x slices of a volume, with a shared colour scale."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    vol = np.asarray(volume, np.float32)
    nz, ny, nx = vol.shape
    scale = 1.0 / pixel_um if pixel_um else 1.0
    views = [
        (vol[nz // 2], f"z = {nz // 2}", (0, nx, ny, 0)),
        (vol[:, ny // 2], f"y = {ny // 2}", (0, nx, nz, 0)),
        (vol[:, :, nx // 2], f"x = {nx // 2}", (0, ny, nz, 0)),
    ]
    lo, hi = np.percentile(vol, [0.5, 99.9]) * scale
    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    unit = "um" if pixel_um else "px"
    for ax, (img, label, extent) in zip(axes, views, strict=True):
        ext = np.array(extent, float) * (pixel_um or 1.0)
        im = ax.imshow(img * scale, cmap="gray", vmin=lo, vmax=hi, extent=tuple(ext))
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(unit)
    fig.suptitle(title, fontsize=10)
    fig.colorbar(im, ax=list(axes), label=f"attenuation (1/{unit})", shrink=0.8)
    fig.savefig(path, dpi=dpi)


def size_histogram_figure(path, diameters, unit="um", *, dpi=110) -> None:
    """PNG of the particle-size distribution (equivalent diameter)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    diameters = np.asarray(diameters, float)
    fig = Figure(figsize=(5.5, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if diameters.size:
        counts, centers, edges = size_histogram(
            diameters, bins=min(30, max(5, diameters.size // 3))
        )
        ax.bar(centers, counts, width=np.diff(edges), edgecolor="black", color="tab:blue")
        ax.axvline(diameters.mean(), color="tab:red", label=f"mean {diameters.mean():.3g} {unit}")
        ax.legend()
    ax.set_xlabel(f"equivalent diameter ({unit})")
    ax.set_ylabel("particles")
    ax.set_title(f"{diameters.size} particles", fontsize=10)
    fig.savefig(path, dpi=dpi)
