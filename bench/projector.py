"""Micro-benchmark of the TXM physics: tab generation, projection and frame rendering.

Run ``python bench/projector.py``; prints milliseconds per frame (median of N angles)
for 512 x 512 (128 nm pixels) and 1024 x 1024 (64 nm pixels, Xradia LFOV) frames of
the default NMC811 tab.  Nothing is asserted.
"""

from __future__ import annotations

import time

import numpy as np

from sim_devices.physics import DetectorGeometry, DetectorModel, make_tab, project, render_frame

__all__ = ["main"]


def _median_ms(fn, n):
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main(n_angles: int = 20) -> None:
    """Print timings (ms) for tab generation, projection and rendering."""
    make_tab(seed=0, height_um=5.0)  # warm up / load the numba cache
    t0 = time.perf_counter()
    tab = make_tab(seed=1)
    gen_s = time.perf_counter() - t0
    print(
        f"make_tab: {gen_s * 1e3:.0f} ms, {tab.n_nmc} NMC particles, "
        f"{tab.radii_um.size - tab.n_nmc} CBD blobs"
    )
    angles = np.linspace(0.0, np.pi, n_angles, endpoint=False)
    rng = np.random.default_rng(0)
    for n, pix in ((512, 0.128), (1024, 0.064)):
        model = DetectorModel(geometry=DetectorGeometry(n, n, pix))
        project(tab, 0.0, 8.0, model)  # compile outside the timing
        ms_p = _median_ms(lambda i, m=model: project(tab, angles[i], 8.0, m), n_angles)
        p = project(tab, 0.3, 8.0, model)
        ms_r = _median_ms(lambda i, m=model, p=p: render_frame(p, 1.0, rng, m), 5)
        ms_b = _median_ms(lambda i, m=model, p=p: render_frame(p, 1.0, rng, m, 800.0), 5)
        print(
            f"{n}x{n} @ {pix * 1e3:.0f} nm: project {ms_p:.1f} ms/frame, "
            f"render {ms_r:.1f} ms/frame (defocused {ms_b:.1f} ms)"
        )


if __name__ == "__main__":
    main()
