"""Slice-and-view benchmark: rendering a slice, assembling it live, registering EDS and SIMS.

Usage::

    python bench/fibsem.py [--slices 8] [--faces 8] [--no-write]

At the instrument's sizes (SEM 384 x 512 at 50 nm, two detectors; EDS 7 lines of
216 x 352 at 81.4 nm; SIMS 2 masses of 500 x 500 at 72 nm) on seed 004's composite
cathode phantom (``tests/unit/serial_runs.py``, the unit tests' runs):

* seconds to render one slice per modality (``sim_devices.physics.serial_render``);
* seconds per slice of :class:`multiscope.callbacks.slice_and_view.SliceAndViewAssembler`
  fed a run's documents (HDF5 reads included), and of its stop (volumes, figures,
  derived run); the drift error against the known drift;
* the EDS-SIMS registration (:func:`multiscope.analysis.serial.correlate_slice`:
  Li-host lines against 6Li+) beside an anchor, scikit-image's
  ``phase_cross_correlation`` of the same maps (SIMS resampled onto the EDS pixels and
  cut to the EDS map's shape), and beside the seed's pair (Zr La against 6Li+) with
  the same :func:`~multiscope.analysis.correlative.register`: seconds and error in EDS
  pixels against the known field offsets, over ``--faces`` faces; ratios to the anchor.

Writes the section ``## Slice and view (bench/fibsem.py)`` of ``docs/benchmarks.md``
unless ``--no-write``; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "unit"))
from _report import write_section  # noqa: E402
from serial_runs import (  # noqa: E402
    EDS_ORIGIN,
    EDS_PX,
    EDS_SHAPE,
    LINES,
    SEM_ORIGIN,
    SEM_PX,
    SEM_SHAPE,
    SIMS_PX,
    SIMS_SHAPE,
    block_md,
    feed,
    phantom,
    render_series,
    run_documents,
    truth,
)

from multiscope.analysis.correlative import register, resample  # noqa: E402
from multiscope.analysis.serial import correlate_slice  # noqa: E402
from multiscope.callbacks.slice_and_view import SliceAndViewAssembler  # noqa: E402
from sim_devices.physics.serial_render import bse_images, eds_maps, sims_maps  # noqa: E402

HEADING = "## Slice and view (bench/fibsem.py)"


def _median_time(fn, repeats=5):
    fn()  # warm-up: numba compilation, caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def render_times(ph) -> dict[str, float]:
    """Median seconds to render one slice of each modality."""
    rng = np.random.default_rng(0)
    return {
        "SEM, CBS + TLD 384 x 512": _median_time(
            lambda: bse_images(ph, 1.0, SEM_SHAPE, SEM_PX, SEM_ORIGIN, rng=rng)),
        "EDS, 7 lines 216 x 352": _median_time(
            lambda: eds_maps(ph, 1.0, EDS_SHAPE, EDS_PX, EDS_ORIGIN, lines=LINES, rng=rng)),
        "SIMS, 2 masses 500 x 500": _median_time(
            lambda: sims_maps(ph, 1.0, SIMS_SHAPE, SIMS_PX, EDS_ORIGIN, rng=rng)),
    }  # fmt: skip


def train_classifier(ph):
    """A CBS + TLD pixel classifier (30 trees) painted on 400 pixels per class of a face."""
    from multiscope.analysis.pixel_classifier import train_pixel_classifier

    images = bse_images(ph, 2.5, SEM_SHAPE, SEM_PX, SEM_ORIGIN, rng=np.random.default_rng(3))
    rng = np.random.default_rng(0)
    painted = np.zeros(SEM_SHAPE, dtype=np.int8)
    for c, label in enumerate((0, 1, 3, 5), start=1):  # pore, carbon, LCO, LLZTO
        rows, cols = np.nonzero(images["labels"] == label)
        pick = rng.choice(len(rows), min(400, len(rows)), replace=False)
        painted[rows[pick], cols[pick]] = c
    channels = np.stack([images["cbs"], images["tld"]]).astype(float)
    return train_pixel_classifier(channels, painted, n_estimators=30, max_depth=10)


def assembly(ph, n_slices: int, classifier=None) -> dict:
    """Seconds per slice and at the stop of the live assembler; its drift error (px)."""
    drift, offset = truth(n_slices, seed=11)
    slices = render_series(ph, range(1, n_slices + 1), drift, offset, seed=11)
    with tempfile.TemporaryDirectory() as tmp:
        docs = run_documents(Path(tmp) / "raw", block_md(n_slices), slices)
        published = []
        assembler = SliceAndViewAssembler(lambda n, d: published.append(n),
                                          output_dir=Path(tmp) / "out",
                                          classifier=classifier)  # fmt: skip
        stop = docs.pop()
        seconds = feed(assembler, docs)
        t0 = time.perf_counter()
        assembler(stop[0], stop[1])
        stop_s = time.perf_counter() - t0
    table = assembler.series_table()
    expected = (drift - drift[0]) / SEM_PX
    error = np.abs(table["drift_px"] - expected).max(axis=1)
    # Anchor: stack.measure_drift on the same CBS images and fiducial window.
    from serial_runs import FIDUCIAL_PX

    from multiscope.analysis.stack import measure_drift

    r0, r1, c0, c1 = FIDUCIAL_PX
    cbs = np.stack([slices[n]["sem"][0] for n in sorted(slices)]).astype(float)
    t0 = time.perf_counter()
    anchor = measure_drift(cbs, fiducial=(slice(r0, r1), slice(c0, c1)))
    anchor_s = (time.perf_counter() - t0) / max(len(cbs) - 1, 1)
    anchor_error = np.abs(anchor - expected).max(axis=1)
    per_slice = [seconds[n] for n in sorted(seconds)]
    return {"per_slice": per_slice, "stop": stop_s, "drift_error_px": error,
            "drift_max_px": float(np.abs(expected).max()), "anchor_error_px": anchor_error,
            "anchor_s": anchor_s}  # fmt: skip


def _anchor(reference, sims):
    """phase_cross_correlation of the SIMS map on EDS pixels, cut or zero-padded to the
    reference's shape; converted to register()'s answer (SIMS first centre, um)."""
    from skimage.registration import phase_cross_correlation

    on_grid = resample(sims, SIMS_PX, EDS_PX)
    cut = np.zeros(reference.shape)
    rows, cols = (min(a, b) for a, b in zip(reference.shape, on_grid.shape, strict=True))
    cut[:rows, :cols] = on_grid[:rows, :cols]
    shift = phase_cross_correlation(reference, cut, upsample_factor=20)[0]
    return shift * EDS_PX - (EDS_PX - SIMS_PX) / 2.0


def registration(ph, n_faces: int) -> dict[str, tuple[list, list]]:
    """Per method: (seconds, error in EDS px) over ``n_faces`` faces with known offsets."""
    from multiscope.analysis.serial import li_host_reference

    rng = np.random.default_rng(5)
    results = {"correlate_slice (Li hosts vs 6Li+)": ([], []),
               "register (Zr La vs 6Li+, the seed's pair)": ([], []),
               "anchor: phase_cross_correlation (Li hosts vs 6Li+)": ([], [])}  # fmt: skip
    for face in range(n_faces):
        depth = 0.3 + 0.4 * face
        eds_origin = (EDS_ORIGIN[0] + rng.uniform(-1, 1), EDS_ORIGIN[1] + rng.uniform(-1, 1))
        offset = rng.choice([-1.0, 1.0], 2) * rng.uniform(1.0, 2.0, 2)
        sims_origin = (eds_origin[0] + offset[0], eds_origin[1] + offset[1])
        eds = eds_maps(ph, depth, EDS_SHAPE, EDS_PX, eds_origin, lines=LINES, rng=rng)
        sims = sims_maps(ph, depth, SIMS_SHAPE, SIMS_PX, sims_origin, rng=rng)
        true = offset + (SIMS_PX - EDS_PX) / 2.0
        eds_f = {k: v.astype(float) for k, v in eds.items()}
        li = sims["6Li+"].astype(float)
        methods = [
            lambda e=eds_f, m=li: correlate_slice(e, {"6Li+": m}, EDS_PX, SIMS_PX).shift_um,
            lambda e=eds_f, m=li: register(e["Zr La"], m, EDS_PX, SIMS_PX),
            lambda e=eds_f, m=li: _anchor(li_host_reference(e)[0], m),
        ]
        for (seconds, errors), method in zip(results.values(), methods, strict=True):
            t0 = time.perf_counter()
            found = np.asarray(method())
            seconds.append(time.perf_counter() - t0)
            errors.append(float(np.hypot(*(found - true)) / EDS_PX))
    return results


def report(renders, assembled, segmented, registered, n_faces) -> str:
    load = os.getloadavg()[0]
    per = assembled["per_slice"]
    lines = [
        HEADING, "",
        "Command: `python bench/fibsem.py`. Seed 004's composite cathode phantom "
        "(`tests/unit/serial_runs.py`), the instrument's sizes; "
        f"{time.strftime('%Y-%m-%d %H:%M')}, shared 2-core machine, load average {load:.1f}. "
        "Seconds are medians unless stated.", "",
        "| step | seconds |", "|---|---:|",
    ]  # fmt: skip
    for name, seconds in renders.items():
        lines.append(f"| render one slice: {name} | {seconds:.3f} |")
    lines += [
        f"| assembler, per slice ({len(per)} slices; frames read, drift, EDS-SIMS registration, "
        f"covariance, alignment): median (max) | {statistics.median(per):.3f} "
        f"({max(per):.3f}) |",
        f"| assembler, the stop (volumes to HDF5, 3 figures, derived run) | "
        f"{assembled['stop']:.3f} |",
        f"| the same with a pixel classifier (CBS + TLD, 30 trees): per slice, median (max) | "
        f"{statistics.median(segmented['per_slice']):.3f} ({max(segmented['per_slice']):.3f}) |",
        f"| the same: the stop (4 figures) | {segmented['stop']:.3f} |",
        "",
        f"Drift found against a known random walk (up to {assembled['drift_max_px']:.1f} px) "
        f"in the fiducial window: largest error {assembled['drift_error_px'].max():.3f} px "
        "(`analysis.serial.slice_drift`: windows high-passed and tapered, plain "
        "correlation); the anchor `analysis.stack.measure_drift` (phase correlation of the "
        f"windows as they are) {assembled['anchor_error_px'].max():.3f} px, "
        f"{assembled['anchor_s']:.3f} s per slice.",
        "",
        f"EDS-SIMS registration over {n_faces} faces (1-2 um field offsets of either sign): "
        "error in EDS pixels against the known offset; time ratio to the anchor.", "",
        "| method | s / face (median) | ratio to anchor | error, median (max) EDS px |",
        "|---|---:|---:|---:|",
    ]  # fmt: skip
    anchor_s = statistics.median(list(registered.values())[-1][0])
    for name, (seconds, errors) in registered.items():
        s = statistics.median(seconds)
        lines.append(f"| {name} | {s:.3f} | {s / anchor_s:.1f} | "
                     f"{statistics.median(errors):.2f} ({max(errors):.2f}) |")  # fmt: skip
    lines += [
        "",
        "Reading: the budget is 2 s per slice; the registration is most of a slice's work. "
        "The anchor is faster but takes both maps as periodic fields of one size: the SIMS "
        "field (36 um) is larger than and offset from the EDS field (17.6 x 28.7 um), so "
        "it is cut to the EDS map's shape and its missing part wraps around; it lands "
        "near the offset but not within the half EDS pixel the issue asks. register() "
        "counts the overlap only, and searches every shift by the mutual information of "
        "the maps' intensity classes, so Zr La alone against 6Li+ (the seed's pair: 6Li+ "
        "bright in LCO, which holds no Zr) registers as well; before that search (gradient "
        "correlation, mutual information choosing among its peaks) the pair missed by a "
        "median 10.3 EDS px. The assembler registers against the Li-host sum (Co La + Ni "
        "Ka + Zr La, each min-max normalised), what 6Li+ sees bar the matrix yields. "
        "Timings vary +-30 % with the load of the shared machine.",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--faces", type=int, default=8)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    ph = phantom()
    renders = render_times(ph)
    assembled = assembly(ph, args.slices)
    segmented = assembly(ph, args.slices, classifier=train_classifier(ph))
    registered = registration(ph, args.faces)
    body = report(renders, assembled, segmented, registered, args.faces)
    print(body)
    if not args.no_write:
        print("written to", write_section(HEADING, body))


if __name__ == "__main__":
    main()
