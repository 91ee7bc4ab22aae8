"""Benchmark of the whiteline fit: vectorised multiscope vs per-pixel ``curve_fit``.

Run ``python bench/xanes.py``.  Builds 1024 x 1024 synthetic normalised Ni K-edge
spectra on 60 energies (12.5 eV pre-edge steps, 1 eV through the edge, 0.5 eV
through the whiteline, 10 eV post-edge): arctangent step (half width 1.5 eV) at
``Ew - 7.5 eV`` plus a Gaussian whiteline (FWHM 4.5 eV, height 0.55) at a random
``Ew`` in 8350-8353 eV, Gaussian noise 0.02 (edge jump 0.2 at pixel SNR ~220).  The
known peak is the maximum of the noise-free spectrum.

Compared: :func:`multiscope.analysis.xanes.fit_whiteline` (numba and numpy engines,
5- and 9-point stencils) on all 1M spectra, and ``scipy.optimize.curve_fit`` per
pixel (Gaussian + arctangent, the generating model; and Lorentzian + line over the
whiteline window; the whiteline is the maximum of the fitted curve) timed on a
subset and extrapolated to 1M.

A second table times :func:`multiscope.analysis.xanes.align_stack` on a drifted
60-energy stack of area-integrated discs (random sub-pixel drift up to 3 px), with and
without the re-sampling correction (``structure``/``related``), at a few frame sizes.

Prints the Markdown tables and writes the section of ``docs/benchmarks.md``
(``--no-write``: print only); nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from multiscope.analysis.xanes import align_stack, fit_whiteline

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

__all__ = ["align_table", "main", "make_spectra"]

HEADING = "## XANES whiteline fit (bench/xanes.py)"

WINDOW = (8345.5, 8358.1)  # eV
FIT_RANGE = (8336.0, 8366.0)  # eV, per-pixel model fits
SIGMA_WL = 4.5 / 2.3548
AMP, GAMMA, OFFSET = 0.55, 1.5, -7.5


def energies_ev() -> np.ndarray:
    """The 60-point energy grid (eV)."""
    return np.concatenate(
        [
            np.arange(8200, 8326, 12.5),
            np.arange(8330, 8346, 1.0),
            np.arange(8346, 8358.1, 0.5),
            np.arange(8360, 8431, 10.0),
        ]
    )


def _shape(e, ew):
    step = 0.5 + np.arctan((e - ew - OFFSET) / GAMMA) / np.pi
    return step + AMP * np.exp(-0.5 * ((e - ew) / SIGMA_WL) ** 2)


def make_spectra(n_pix: int, noise: float = 0.02, seed: int = 0):
    """(energies, n_pix) float32 noisy spectra and their true peak energies (eV)."""
    rng = np.random.default_rng(seed)
    e = energies_ev()
    ew = rng.uniform(8350.0, 8353.0, n_pix)
    spec = np.empty((e.size, n_pix), np.float32)
    for k in range(e.size):  # row by row keeps the float64 temporaries small
        spec[k] = _shape(e[k], ew) + noise * rng.standard_normal(n_pix, dtype=np.float32)
    fine = np.arange(8345.0, 8355.0, 1e-4)
    offset = fine[np.argmax(_shape(fine, 8350.0))] - 8350.0  # rigid shift of the template
    return spec, ew + offset


def _gauss_arctan(e, a, ew, s, e0, g, c):
    return c + 0.5 + np.arctan((e - e0) / g) / np.pi + a * np.exp(-0.5 * ((e - ew) / s) ** 2)


def _lorentz_line(e, a, ew, g, c0, c1):
    return c0 + c1 * (e - 8350.0) + a / (1 + ((e - ew) / g) ** 2)


def _curve_fit_all(spec, e, model):
    sel = (e >= FIT_RANGE[0]) & (e <= FIT_RANGE[1])
    if model == "lorentz":
        sel = (e >= WINDOW[0]) & (e <= WINDOW[1])
    x = e[sel]
    fine = np.arange(WINDOW[0], WINDOW[1], 0.005)
    out = np.empty(spec.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        for j in range(spec.shape[1]):
            y = spec[sel, j].astype(np.float64)
            guess = x[np.argmax(y)] if model == "lorentz" else x[x > 8346][np.argmax(y[x > 8346])]
            try:
                f = _gauss_arctan if model == "gauss" else _lorentz_line
                p0 = (
                    (0.5, guess, 2.0, guess - 7.5, 1.5, 0)
                    if model == "gauss"
                    else (0.5, guess, 3.0, 1.0, 0.0)
                )
                p, _ = curve_fit(f, x, y, p0=p0, maxfev=2000)
                # The whiteline is the maximum of the fitted curve, not a parameter.
                out[j] = fine[np.argmax(f(fine, *p))]
            except RuntimeError:  # no convergence: report the grid maximum
                out[j] = guess
    return out


def _rmse(a, b):
    d = a - b
    return float(np.sqrt(np.mean(d * d)))


def fit_table(n_side: int = 1024, n_subset: int = 500, repeats: int = 5) -> str:
    """The whiteline-fit benchmark as a Markdown table (printed too)."""
    e = energies_ev()
    n = n_side * n_side
    t0 = time.perf_counter()
    spec, truth = make_spectra(n)
    stack = spec.reshape(e.size, n_side, n_side)
    print(f"made {n} spectra x {e.size} energies in {time.perf_counter() - t0:.1f} s")
    rows = []
    for engine in ("numba", "numpy"):
        for npts in (5, 9):
            fit_whiteline(stack[:, :8], e, WINDOW, n_points=npts, engine=engine)  # compile
            times = []
            for _ in range(repeats if engine == "numba" else 2):
                t = time.perf_counter()
                wl = fit_whiteline(stack, e, WINDOW, n_points=npts, engine=engine)
                times.append(time.perf_counter() - t)
            rows.append(
                (
                    f"multiscope `fit_whiteline` ({engine}, {npts}-point)",
                    "all 1M",
                    min(times),
                    _rmse(wl.ravel(), truth),
                    float(np.mean(wl.ravel() - truth)),
                )
            )
    sub = np.linspace(0, n - 1, n_subset).astype(np.int64)
    for model, label in (
        ("gauss", "Gaussian + arctan (true model)"),
        ("lorentz", "Lorentzian + line"),
    ):
        t = time.perf_counter()
        got = _curve_fit_all(spec[:, sub], e, model)
        dt = (time.perf_counter() - t) / n_subset * n
        rows.append(
            (
                f"per-pixel `curve_fit`, {label}",
                f"{n_subset}, extrapolated",
                dt,
                _rmse(got, truth[sub]),
                float(np.mean(got - truth[sub])),
            )
        )
    wl9 = fit_whiteline(stack, e, WINDOW, n_points=9).ravel()
    rows.append(
        (
            "multiscope 9-point on the same subset",
            f"{n_subset}",
            float("nan"),
            _rmse(wl9[sub], truth[sub]),
            float(np.mean(wl9[sub] - truth[sub])),
        )
    )
    lines = [
        f"1024 x 1024 spectra x {e.size} energies, noise 0.02 (normalised), "
        f"{os.cpu_count()} cores.",
        "",
        "| method | spectra timed | time for 1M spectra (s) | RMSE (eV) | bias (eV) |",
        "|---|---|---|---|---|",
    ]
    for name, what, secs, rmse, bias in rows:
        tt = "-" if np.isnan(secs) else f"{secs:.3g}"
        lines.append(f"| {name} | {what} | {tt} | {rmse:.3f} | {bias:+.3f} |")
    table = "\n".join(lines)
    print(table)
    return table


def drifted_stack(n_side: int, n_energies: int = 60, seed: int = 0):
    """Area-integrated discs whose contrast follows an edge + whiteline, drifted per energy.

    Discs are drawn on an 8x finer grid; each energy's frame is the fine image shifted
    by a whole number of fine cells (drift in 1/8 px, up to +-3 px) and binned 8 x 8;
    photon-like noise 0.004.  Returns (stack, energies in keV, drift in px).
    """
    rng = np.random.default_rng(seed)
    f = 8
    n_fine = f * n_side
    label = np.zeros((n_fine, n_fine), np.int32)
    yy, xx = np.ogrid[:n_fine, :n_fine]
    n_disc = max(4, int(0.6 * (n_side / 12) ** 2))
    for d in range(1, n_disc + 1):
        cy, cx = rng.uniform(0, n_fine, 2)
        r = f * rng.uniform(3, 10)
        label[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = d
    e = energies_ev()[:n_energies]
    ew = rng.uniform(8350.0, 8353.0, n_disc + 1)
    thick = rng.uniform(0.3, 1.0, n_disc + 1)
    thick[0] = 0.0
    drift = np.round(rng.uniform(-3, 3, (e.size, 2)) * f) / f
    drift[-1] = 0
    stack = np.empty((e.size, n_side, n_side), np.float32)
    for k in range(e.size):
        table = (0.05 + thick * (0.1 + 0.2 * _shape(e[k], ew))).astype(np.float32)
        fine = np.roll(table[label], tuple(int(v) for v in drift[k] * f), axis=(0, 1))
        stack[k] = fine.reshape(n_side, f, n_side, f).mean(axis=(1, 3))
    stack += rng.normal(0, 0.004, stack.shape).astype(np.float32)
    return stack, e / 1000, drift


def align_table(sizes=(128, 256, 512)) -> str:
    """Timing of align_stack with and without the re-sampling correction (Markdown)."""
    rows = []
    for n_side in sizes:
        stack, e, drift = drifted_stack(n_side)
        post = np.flatnonzero(e >= 8.37)
        related = np.flatnonzero(e >= WINDOW[0] / 1000)
        t = time.perf_counter()
        shifts, _ = align_stack(stack, -1)
        t_plain = time.perf_counter() - t
        err_plain = float(np.abs(shifts + drift).max())
        t = time.perf_counter()
        shifts, _ = align_stack(stack, -1, structure=post, related=related)
        t_corr = time.perf_counter() - t
        err_corr = float(np.abs(shifts + drift).max())
        rows.append((n_side, t_plain, err_plain, t_corr, err_corr))
        print(f"{n_side}: plain {t_plain:.2f} s, corrected {t_corr:.2f} s")
    lines = [
        f"`align_stack`, {stack.shape[0]} energies, drift up to 3 px, {os.cpu_count()} cores.",
        "",
        "| frame | plain: time (s) | plain: max shift error (px) | with re-sampling "
        "correction: time (s) | corrected: max shift error (px) |",
        "|---|---:|---:|---:|---:|",
    ]
    for n_side, t_plain, e_plain, t_corr, e_corr in rows:
        lines.append(
            f"| {n_side} x {n_side} | {t_plain:.2f} | {e_plain:.3f} | {t_corr:.1f} | {e_corr:.3f} |"
        )
    table = "\n".join(lines)
    print(table)
    return table


def main(argv=None) -> None:
    """Run both benchmarks; write the section of docs/benchmarks.md unless --no-write."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    fits = fit_table()
    aligns = align_table()
    body = (
        f"{HEADING}\n\n"
        "`python bench/xanes.py`: 1024 x 1024 synthetic normalised Ni K-edge spectra on 60 "
        "energies (0.5 eV steps through the whiteline), arctangent step + Gaussian whiteline "
        "(FWHM 4.5 eV) at a known random position in 8350-8353 eV, Gaussian noise 0.02 (an "
        "edge jump of 0.2 at pixel SNR ~220).  Truth is the maximum of the noise-free "
        "spectrum; for the per-pixel fits the whiteline is the maximum of the fitted curve. "
        "Times are wall-clock on this machine (shared, so +-30 %); `curve_fit` is timed on "
        "500 spectra and extrapolated.\n\n"
        f"{fits}\n\n"
        "Reading: the vectorised fit does 1M spectra in < 0.1 s (numba, 2 cores), thousands "
        "of times faster than per-pixel `curve_fit`.  Its 9-point stencil (+-2 eV) is more "
        "accurate than a per-pixel Lorentzian fit (the usual peak model; biased by the "
        "asymmetric edge), but a per-pixel fit of the *exact generating model* (Gaussian + "
        "arctangent, 6 parameters) is more accurate still: the quadratic's ~+0.03 eV bias "
        "comes from the peak's asymmetry.  With 0.5 eV steps the 5-point stencil (+-1 eV) "
        "is noise-limited; it is the right choice for ~1 eV steps.\n\n"
        "Alignment of a drifted stack (synthetic discs, area-integrated; "
        "`bench.xanes.drifted_stack`):\n\n"
        f"{aligns}\n\n"
        "Reading: the re-sampling correction (super-resolving the post-edge structure "
        "three times finer, refining every shift against it, correcting each energy's "
        "partial-volume gain) costs conjugate-gradient iterations on the fine grid, "
        "~linear in the pixel count: ~3 min for a 1024 x 1024 map at the end of a run "
        "(the live maps do not use it; `correct_resampling=False` skips it).  On these "
        "sharp, high-contrast discs plain cross-correlation is already within ~0.01 px "
        "and the model fit does not improve it; on the simulated NMC tab (smooth "
        "particles, contrast changing across the edge) it halves the error (0.011 -> "
        "0.0055 px rms).  The correction is what brings the whiteline RMSE of drifted "
        "stacks to the drift-free one (tests/unit/test_analysis_xanes.py: 0.13-0.16 eV "
        "plain, 0.078 eV corrected, 0.077 eV without drift).\n"
    )
    if not args.no_write:
        print(f"wrote {write_section(HEADING, body)}")


if __name__ == "__main__":
    main()
