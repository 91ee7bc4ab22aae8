"""Figures of a slice-and-view series (PNG, matplotlib's Agg canvas: safe on a worker thread).

:class:`~multiscope.callbacks.slice_and_view.SliceAndViewAssembler` writes them at
the end of each run: the BSE volume's three orthoslices, the Li x Zr covariance
map with its line profile (seed 004, fig. 6) and, with a classifier, the
segmentation of the last slice.
"""

from __future__ import annotations

import numpy as np

from multiscope.callbacks.tomo import add_scale_bar

__all__ = ["covariance_figure", "orthoslice_figure", "segmentation_figure"]


def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)  # no pyplot: safe off the main thread
    return fig


def _limits(image):
    good = np.asarray(image, float)[np.isfinite(image)]
    if not good.size:
        return 0.0, 1.0
    lo, hi = np.percentile(good, [0.5, 99.5])
    return lo, hi if hi > lo else lo + 1.0


def orthoslice_figure(path, volume, voxel_um, *, title="", dpi=110) -> None:
    """PNG of the central xy, xz and yz sections of ``volume`` ``(z, y, x)`` at true aspect.

    ``voxel_um`` is ``(dz, dy, dx)``; z (the milling direction) is drawn downwards.
    """
    import matplotlib as mpl

    volume = np.asarray(volume, np.float32)
    dz, dy, dx = voxel_um
    nz, ny, nx = volume.shape
    cmap = mpl.colormaps["gray"].with_extremes(bad="tab:red")
    sections = [
        (f"xy (face, slice {nz // 2 + 1} of {nz})", volume[nz // 2], (nx * dx, ny * dy)),
        (f"xz (row {ny // 2})", volume[:, ny // 2, :], (nx * dx, nz * dz)),
        (f"yz (column {nx // 2})", volume[:, :, nx // 2], (ny * dy, nz * dz)),
    ]
    lo, hi = _limits(volume[nz // 2])
    fig = _figure((11.0, 4.2))
    for k, (label, image, (width, height)) in enumerate(sections):
        ax = fig.add_subplot(1, 3, k + 1)
        ax.imshow(np.ma.masked_invalid(image), cmap=cmap, vmin=lo, vmax=hi,
                  extent=(0, width, height, 0), interpolation="nearest")  # fmt: skip
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("um", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=dpi)


def covariance_figure(path, cov_map, profile, pixel_um, *, title="", dpi=110) -> None:
    """PNG of a Li x Zr covariance map (diverging colours, 0 white) and its middle-row profile."""
    import matplotlib as mpl

    cov_map = np.asarray(cov_map, np.float64)
    good = np.abs(cov_map[np.isfinite(cov_map)])
    limit = float(np.percentile(good, 99.5)) if good.size else 1.0
    cmap = mpl.colormaps["RdBu_r"].with_extremes(bad="0.75")
    fig = _figure((6.4, 6.4))
    ax = fig.add_subplot(2, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(cov_map), cmap=cmap, vmin=-limit, vmax=limit or 1.0)
    middle = cov_map.shape[0] // 2
    ax.axhline(middle, color="black", lw=0.8, ls="--")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    add_scale_bar(ax, cov_map.shape, pixel_um, color="black")
    fig.colorbar(im, ax=ax, label="(Li - mean)(Zr - mean), normalised", shrink=0.85)
    ax2 = fig.add_subplot(2, 1, 2)
    x_um = np.arange(len(profile)) * pixel_um * (cov_map.shape[1] - 1) / max(len(profile) - 1, 1)
    ax2.plot(x_um, profile, color="black", lw=0.8)
    ax2.axhline(0.0, color="0.6", lw=0.6)
    ax2.set_xlabel("x along the dashed row (um)")
    ax2.set_ylabel("covariance")
    fig.savefig(path, dpi=dpi)


def segmentation_figure(path, labels, pixel_um, *, names=None, title="", dpi=110) -> None:
    """PNG of a label map (one colour per class, 0: not imaged) with a legend."""
    import matplotlib as mpl
    from matplotlib.patches import Patch

    labels = np.asarray(labels)
    classes = [int(c) for c in np.unique(labels) if c != 0]
    cmap = mpl.colormaps["tab10"]
    shown = np.ma.masked_equal(labels, 0)
    fig = _figure((6.0, 4.8))
    ax = fig.add_subplot()
    ax.imshow(shown, cmap=cmap, vmin=0, vmax=9, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    add_scale_bar(ax, labels.shape, pixel_um, color="black")
    names = names or {}
    ax.legend(handles=[Patch(color=cmap(c % 10), label=names.get(c, f"class {c}"))
                       for c in classes], fontsize=7, loc="upper right")  # fmt: skip
    fig.savefig(path, dpi=dpi)
