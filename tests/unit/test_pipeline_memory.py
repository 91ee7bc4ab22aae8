"""The live tomography pipeline keeps the last ``keep_last`` results, so memory stays flat."""

from __future__ import annotations

import gc
import tracemalloc
from dataclasses import replace

import numpy as np
import pytest
from synthetic_tomo import RunSpec, random_spheres, tomo_run

from multiscope.callbacks.mosaic import MosaicStitcher, Tile
from multiscope.callbacks.pipelines import KEEP_LAST, TomographyPipeline

WARM_UP = 5


def test_twenty_tomograms_grow_memory_by_at_most_one_volume(tmp_path):
    spheres = random_spheres(np.random.default_rng(0), 3, z_range=(0, 12), lateral=18)
    spec = RunSpec(spheres, ny=12, nx=48, num_projections=36, center=23.5, seed=0)
    derived_runs = []
    pipeline = TomographyPipeline(
        tmp_path / "derived",
        publish=lambda name, doc: name == "start" and derived_runs.append(doc["uid"]),
    )
    assert pipeline.keep_last == KEEP_LAST == 2

    def tomogram(seed: int) -> None:
        for name, doc in tomo_run(replace(spec, seed=seed), tmp_path / "raw"):
            pipeline(name, doc)

    # Traced from the first tomogram, so that freeing what the warm-up allocated counts.
    tracemalloc.start()
    try:
        # Warm-up: the results the pipeline is meant to keep, and bounded one-off costs
        # (JIT, the reconstruction engines' cache of 4 geometries, matplotlib's glyphs).
        for seed in range(WARM_UP):
            tomogram(seed)
        gc.collect()
        baseline, _ = tracemalloc.get_traced_memory()
        for seed in range(WARM_UP, WARM_UP + 20):
            tomogram(seed)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()

    volume_bytes = pipeline.reconstructions[-1].volume.nbytes
    print(
        f"20 tomograms: memory grew {grown / 1e3:.0f} kB; one volume is {volume_bytes / 1e3:.0f} kB"
    )
    assert len(derived_runs) == WARM_UP + 20  # every one was reconstructed and published
    assert grown <= volume_bytes
    kept = list(pipeline.reconstructions)
    assert len(kept) == KEEP_LAST and all(r.volume is not None for r in kept)
    assert kept[-1].uid == derived_runs[-1]

    pipeline.keep_last = 1  # settable while running: drops the older at once
    assert list(pipeline.reconstructions) == kept[-1:]
    assert pipeline.stitcher.keep_last == 1
    with pytest.raises(ValueError, match="at least 1"):
        pipeline.keep_last = 0


class _CountingStitcher(MosaicStitcher):
    """Stitches nothing: a stand-in volume per mosaic, to count what ``results`` keeps."""

    def stitch(self, mosaic_id, tiles):
        return {"volume": np.zeros((4, 4, 4), np.float32), "tiles": [t.raw_uid for t in tiles]}


def test_stitcher_keeps_the_last_mosaics():
    stitcher = _CountingStitcher("unused", keep_last=2)
    for k in range(5):
        mosaic = {"mosaic_id": f"m{k}", "tile_index": 0, "num_tiles": 1, "z_um": 0.0}
        stitcher.add_tile(Tile(f"raw{k}", f"recon{k}", mosaic, None, np.zeros((4, 4, 4))))
    assert list(stitcher.results) == ["m3", "m4"]
    stitcher.keep_last = None  # keep everything from now on
    stitcher.add_tile(Tile("raw5", "recon5", {**mosaic, "mosaic_id": "m5"}, None, np.zeros(1)))
    assert list(stitcher.results) == ["m3", "m4", "m5"]
