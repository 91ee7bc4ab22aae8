"""Figures of a XANES map (PNG, matplotlib's Agg canvas: safe on the pipeline's worker thread).

:class:`~multiscope.callbacks.xanes_base.XanesMapBase` writes three per run: the
whiteline map, the histogram of its energies and a few example spectra with
the fits the whiteline map makes.
"""

from __future__ import annotations

import numpy as np

from multiscope.callbacks.tomo import add_scale_bar

__all__ = ["histogram_figure", "spectra_figure", "whiteline_map_figure"]


def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)  # Agg, no pyplot: safe on the pipeline's worker thread
    return fig


def whiteline_map_figure(path, wl_eV, pixel_um=None, *, title="", dpi=110) -> None:  # noqa: N803
    """PNG of a whiteline map (eV) with a colour bar in eV; masked pixels grey."""
    import matplotlib as mpl

    img = np.asarray(wl_eV, np.float64)
    good = img[np.isfinite(img)]
    lo, hi = np.percentile(good, [1, 99]) if good.size else (0.0, 1.0)
    cmap = mpl.colormaps["viridis"].with_extremes(bad="0.75")  # masked pixels grey
    fig = _figure((5.6, 4.8))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(img), cmap=cmap, vmin=lo, vmax=hi if hi > lo else lo + 1)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    if pixel_um:
        add_scale_bar(ax, img.shape, pixel_um, color="black")
    fig.colorbar(im, ax=ax, label="whiteline energy (eV)", shrink=0.85)
    fig.savefig(path, dpi=dpi)


def histogram_figure(path, counts, edges, *, title="", dpi=110) -> None:
    """PNG of a histogram of whiteline energies (counts per bin of ``edges``, eV)."""
    fig = _figure((5.6, 3.6))
    ax = fig.add_subplot()
    ax.stairs(counts, edges, fill=True)
    ax.set_xlabel("whiteline energy (eV)")
    ax.set_ylabel("pixels")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)


def spectra_figure(path, norm, energies_keV, wl_map, window, n_points, *, title="", k=4, dpi=110):  # noqa: N803
    """PNG of ``k`` example normalised spectra (quantiles of the map) with their quadratic fits."""
    e = np.asarray(energies_keV, np.float64) * 1000.0
    flat = np.asarray(norm).reshape(len(e), -1)
    wl = np.asarray(wl_map, np.float64).ravel()
    fig = _figure((6.4, 4.2))
    ax = fig.add_subplot()
    ok = np.flatnonzero(np.isfinite(wl))
    if ok.size:
        order = ok[np.argsort(wl[ok])]
        picks = [order[int(q * (order.size - 1))] for q in np.linspace(0.1, 0.9, k)]
        lo, hi = window[0] * 1000.0, window[1] * 1000.0
        idx = np.flatnonzero((e >= lo) & (e <= hi))
        for p in picks:
            y = flat[:, p].astype(np.float64)
            (line,) = ax.plot(e, y, "o", ms=3, label=f"pixel {p}: {wl[p]:.2f} eV")
            # The fit fit_whiteline makes: stencil around the 3-point-mean maximum.
            yw = y[idx]
            m = np.convolve(yw, np.ones(3) / 3, mode="same")
            c = int(np.argmax(m))
            s = int(np.clip(c - n_points // 2, 0, max(0, idx.size - n_points)))
            st = idx[s : s + n_points]
            if st.size >= 3:
                coef = np.polyfit(e[st] - e[st].mean(), y[st], 2)
                xs = np.linspace(e[st][0], e[st][-1], 50)
                ax.plot(xs, np.polyval(coef, xs - e[st].mean()), "-", color=line.get_color())
            ax.axvline(wl[p], color=line.get_color(), lw=0.8, ls=":")
        ax.set_xlim(lo - 20, hi + 20)
        ax.legend(fontsize=7)
    ax.set_xlabel("energy (eV)")
    ax.set_ylabel("normalised absorbance")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
