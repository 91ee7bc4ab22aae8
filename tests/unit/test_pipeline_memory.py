"""The live tomography pipeline keeps the last ``keep_last`` results, so memory stays flat.

The memory is measured in a fresh interpreter (this file run as a script): tracemalloc
traces the whole process, and earlier tests leave threads running (Channel Access
clients, RunEngine event loops) and caches whose allocations would count as the
pipeline's.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from synthetic_tomo import RunSpec, random_spheres, tomo_run

from multiscope.callbacks.mosaic import MosaicStitcher, Tile
from multiscope.callbacks.pipelines import KEEP_LAST, TomographyPipeline

WARM_UP = 5


def _tomograms(out_dir: Path, **pipeline_kwargs):
    """A pipeline, the uids of the derived runs it published and ``tomogram(seed)``."""
    spheres = random_spheres(np.random.default_rng(0), 3, z_range=(0, 12), lateral=18)
    spec = RunSpec(spheres, ny=12, nx=48, num_projections=36, center=23.5, seed=0)
    derived_runs = []
    pipeline = TomographyPipeline(
        out_dir / "derived",
        publish=lambda name, doc: name == "start" and derived_runs.append(doc["uid"]),
        **pipeline_kwargs,
    )

    def tomogram(seed: int) -> None:
        for name, doc in tomo_run(replace(spec, seed=seed), out_dir / "raw"):
            pipeline(name, doc)

    return pipeline, derived_runs, tomogram


def _measure(out_dir: Path, num_tomograms: int, keep_last: int) -> dict:
    """How much memory ``num_tomograms`` tomograms after a warm-up leave allocated."""
    pipeline, derived_runs, tomogram = _tomograms(out_dir, keep_last=keep_last)
    # Traced from the first tomogram, so that freeing what the warm-up allocated counts.
    tracemalloc.start()
    try:
        # Warm-up: the results the pipeline is meant to keep, and bounded one-off costs
        # (JIT, the reconstruction engines' cache of 4 geometries, matplotlib's glyphs).
        for seed in range(WARM_UP):
            tomogram(seed)
        gc.collect()
        baseline, _ = tracemalloc.get_traced_memory()
        for seed in range(WARM_UP, WARM_UP + num_tomograms):
            tomogram(seed)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    kept = list(pipeline.reconstructions)
    return {
        "grown": grown,
        "volume_bytes": kept[-1].volume.nbytes,
        "derived_runs": derived_runs,
        "kept": [r.uid for r in kept],
        "kept_volumes": all(r.volume is not None for r in kept),
    }


def _measure_in_fresh_process(tmp_path, num_tomograms: int, keep_last: int) -> dict:
    args = [sys.executable, __file__, str(tmp_path), str(num_tomograms), str(keep_last)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_twenty_tomograms_grow_memory_by_at_most_one_volume(tmp_path):
    assert KEEP_LAST == 2
    m = _measure_in_fresh_process(tmp_path, 20, KEEP_LAST)
    grown, volume_bytes = m["grown"], m["volume_bytes"]
    print(
        f"20 tomograms: memory grew {grown / 1e3:.0f} kB; one volume is {volume_bytes / 1e3:.0f} kB"
    )
    assert len(m["derived_runs"]) == WARM_UP + 20  # every one was reconstructed and published
    assert grown <= volume_bytes
    assert len(m["kept"]) == KEEP_LAST and m["kept_volumes"]
    assert m["kept"][-1] == m["derived_runs"][-1]


def test_the_measurement_sees_kept_volumes(tmp_path):
    """Keeping everything, 3 more tomograms fail the bound above (3 volumes, and more)."""
    m = _measure_in_fresh_process(tmp_path, 3, 1000)
    assert len(m["kept"]) == WARM_UP + 3 and m["kept_volumes"]
    assert m["grown"] > 2 * m["volume_bytes"]


def test_keep_last_is_settable_while_running(tmp_path):
    pipeline, derived_runs, tomogram = _tomograms(tmp_path)
    assert pipeline.keep_last == KEEP_LAST
    for seed in range(3):
        tomogram(seed)
    kept = list(pipeline.reconstructions)
    assert [r.uid for r in kept] == derived_runs[-KEEP_LAST:]

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


if __name__ == "__main__":  # _measure_in_fresh_process: out_dir num_tomograms keep_last
    out_dir, num_tomograms, keep_last = sys.argv[1:]
    print(json.dumps(_measure(Path(out_dir), int(num_tomograms), int(keep_last))))
