"""The electrode sheet under the laser mill: a material map that cuts change (pure numpy).

The sheet is a grid of ``pixel_um`` pixels over the table's working area, in table
coordinates (um): pixel ``(i, j)`` is centred at ``((j + 0.5) p, (i + 0.5) p)``
(``x`` along columns, ``y`` along rows). True means electrode material is there (the
truth: the coating on its foil; the map is the top view). A cut removes every pixel
whose centre lies within half a kerf of the path: a disc swept along the segments.

A piece is cut free when material is enclosed by a cut: :meth:`SheetMap.pieces_in`
labels the material inside a window around the last path; components touching the
window's border are still the sheet.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["NO_PIECE", "PieceGeometry", "SheetMap", "arclength", "point_at"]


def arclength(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cumulative length at each vertex (0 at the first)."""
    return np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])


def point_at(x: np.ndarray, y: np.ndarray, s: float) -> tuple[float, float]:
    """The point of the polyline at arclength ``s`` (clamped to its ends)."""
    cum = arclength(x, y)
    s = float(np.clip(s, 0.0, cum[-1]))
    return float(np.interp(s, cum, x)), float(np.interp(s, cum, y))


@dataclass(frozen=True)
class PieceGeometry:
    """A freed piece: pixels counted (um, um^2); NaN when no piece is free."""

    count: int
    area_um2: float
    width_um: float
    length_um: float
    x_min_um: float
    y_min_um: float
    mask: np.ndarray | None = None
    origin_px: tuple[int, int] = (0, 0)

    def row_width_um(self, y_um: float, pixel_um: float) -> float:
        """Width of the piece in the pixel row at table ``y_um`` (0 outside it)."""
        if self.mask is None:
            return float("nan")
        row = int(np.floor(y_um / pixel_um)) - self.origin_px[0]
        if not 0 <= row < self.mask.shape[0]:
            return 0.0
        return float(self.mask[row].sum()) * pixel_um


NO_PIECE = PieceGeometry(0, 0.0, float("nan"), float("nan"), float("nan"), float("nan"))


class SheetMap:
    """The sheet's material map.

    Parameters
    ----------
    size_um : (float, float)
        Working area ``(x, y)`` extent from the table's origin.
    pixel_um : float
    """

    def __init__(self, size_um=(6000.0, 6000.0), pixel_um: float = 2.0):
        self.pixel_um = float(pixel_um)
        self.size_um = (float(size_um[0]), float(size_um[1]))
        shape = (int(round(self.size_um[1] / self.pixel_um)),
                 int(round(self.size_um[0] / self.pixel_um)))  # fmt: skip
        self.material = np.ones(shape, dtype=bool)

    # -- cutting --------------------------------------------------------------------

    def _window(self, x0, x1, y0, y1, margin_um: float):
        p = self.pixel_um
        ny, nx = self.material.shape
        j0 = max(int(np.floor((min(x0, x1) - margin_um) / p)) - 1, 0)
        j1 = min(int(np.ceil((max(x0, x1) + margin_um) / p)) + 1, nx)
        i0 = max(int(np.floor((min(y0, y1) - margin_um) / p)) - 1, 0)
        i1 = min(int(np.ceil((max(y0, y1) + margin_um) / p)) + 1, ny)
        return i0, i1, j0, j1

    def _segment_kerf(self, ax, ay, bx, by, radius_um: float):
        """``(rows, cols, mask)``: the pixels within ``radius_um`` of the segment a-b."""
        i0, i1, j0, j1 = self._window(ax, bx, ay, by, radius_um)
        if i1 <= i0 or j1 <= j0:
            return None
        p = self.pixel_um
        cy = (np.arange(i0, i1) + 0.5)[:, None] * p
        cx = (np.arange(j0, j1) + 0.5)[None, :] * p
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        if length2 > 0:
            t = np.clip(((cx - ax) * dx + (cy - ay) * dy) / length2, 0.0, 1.0)
        else:
            t = np.zeros((cy.size, cx.size))
        dist2 = (cx - (ax + t * dx)) ** 2 + (cy - (ay + t * dy)) ** 2
        return slice(i0, i1), slice(j0, j1), dist2 <= radius_um * radius_um

    def remove_segment(self, ax, ay, bx, by, radius_um: float) -> None:
        """Remove the material within ``radius_um`` of the segment a-b."""
        kerf = self._segment_kerf(ax, ay, bx, by, radius_um)
        if kerf is not None:
            rows, cols, mask = kerf
            self.material[rows, cols] &= ~mask

    def intact_fraction(self, x, y, radius_um: float) -> float:
        """Share of the pixels within ``radius_um`` of the polyline that still hold material."""
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        kerf = np.zeros_like(self.material)
        for k in range(len(x) - 1):
            part = self._segment_kerf(x[k], y[k], x[k + 1], y[k + 1], radius_um)
            if part is not None:
                rows, cols, mask = part
                kerf[rows, cols] |= mask
        total = int(kerf.sum())
        return float(self.material[kerf].sum()) / total if total else float("nan")

    def sweep(self, x, y, radius_um: float, s0: float, s1: float) -> None:
        """Remove the kerf along the polyline between arclengths ``s0`` and ``s1``."""
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        cum = arclength(x, y)
        for k in range(len(x) - 1):
            seg = cum[k + 1] - cum[k]
            a, b = max(s0, cum[k]), min(s1, cum[k + 1])
            if seg <= 0 or b < a:
                continue
            ta, tb = (a - cum[k]) / seg, (b - cum[k]) / seg
            dx, dy = x[k + 1] - x[k], y[k + 1] - y[k]
            self.remove_segment(x[k] + ta * dx, y[k] + ta * dy, x[k] + tb * dx, y[k] + tb * dy,
                                radius_um)  # fmt: skip

    # -- what was freed -------------------------------------------------------------

    def pieces_in(self, x, y, radius_um: float) -> PieceGeometry:
        """The largest piece the path ``x, y`` encloses (``NO_PIECE`` if none is free)."""
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        i0, i1, j0, j1 = self._window(x.min(), x.max(), y.min(), y.max(), radius_um + self.pixel_um)
        window = self.material[i0:i1, j0:j1]
        labels, count = ndimage.label(window)
        if count == 0:
            return NO_PIECE
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        free = np.setdiff1d(np.arange(1, count + 1), border)
        if free.size == 0:
            return NO_PIECE
        sizes = ndimage.sum_labels(np.ones_like(labels), labels, free)
        best = int(free[int(np.argmax(sizes))])
        mask = labels == best
        rows, cols = np.nonzero(mask)
        p = self.pixel_um
        r0, c0 = int(rows.min()), int(cols.min())
        crop = mask[r0 : int(rows.max()) + 1, c0 : int(cols.max()) + 1]
        return PieceGeometry(
            count=int(free.size), area_um2=float(mask.sum()) * p * p,
            width_um=float(crop.shape[1]) * p, length_um=float(crop.shape[0]) * p,
            x_min_um=(j0 + c0) * p, y_min_um=(i0 + r0) * p, mask=crop,
            origin_px=(i0 + r0, j0 + c0),
        )  # fmt: skip

    @property
    def removed_um2(self) -> float:
        """Area of material removed from the whole sheet."""
        return float((~self.material).sum()) * self.pixel_um**2

    # -- persistence ----------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The map, packed and compressed (an ``.npz``)."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, bits=np.packbits(self.material), shape=self.material.shape,
                            pixel_um=self.pixel_um, size_um=self.size_um)  # fmt: skip
        return buffer.getvalue()

    @classmethod
    def load(cls, path) -> SheetMap:
        """A map saved with :meth:`to_bytes`."""
        with np.load(path) as saved:
            sheet = cls(tuple(saved["size_um"]), float(saved["pixel_um"]))
            shape = tuple(int(n) for n in saved["shape"])
            bits = np.unpackbits(saved["bits"])[: shape[0] * shape[1]]
            sheet.material = bits.reshape(shape).astype(bool)
        return sheet
