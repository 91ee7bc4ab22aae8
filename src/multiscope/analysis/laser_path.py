"""Tool paths of the laser mill: a tab on a handle, a pillar; the spot model; the time.

The spot model (``docs/laser.md``, "Spot model"; decision 0017)
    The focused spot is ~40 um (1/e^2 diameter). The laser removes the material
    within half a *kerf* of its path: a disc of diameter ``kerf`` swept along the
    path. At the lowest power that cuts through the electrode (the power is kept at
    its minimum), the fluence exceeds the ablation threshold over about half the
    spot: ``kerf = KERF_FRACTION * spot`` = 20 um. The kerf is centred on the path,
    so a cut along a piece's nominal outline takes half a kerf off every edge: a
    nominal 100 um tab comes out 80 um wide. A *compensated* path is the outline
    offset outwards by half a kerf: the cut edges land on the outline.

The smallest feature
    A tab (or pillar) narrower than the spot is refused: the beam's wings beyond the
    kerf heat a strip that narrow through, and the piece would not survive.

The frame
    Micrometres, ``x`` across the tab, ``y`` along it. The handle spans
    ``x`` in [-W/2, W/2] and ``y`` in [0, H]; the tab stands on it, ``x`` in
    [-w/2, w/2], ``y`` in [H, H + L]. A path is closed (last vertex = first) and
    runs counter-clockwise; :meth:`ToolPath.moved` places it on the table.

Examples
--------
>>> path = tab_path(100.0, 500.0, 1500.0, 4000.0, spot_um=40.0, compensate=False)
>>> path.piece.tab_width_um
80.0
>>> round(tab_path(100.0, 500.0, 1500.0, 4000.0).piece.tab_width_um, 6)
100.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "DEFAULT_SPOT_UM",
    "KERF_FRACTION",
    "PathError",
    "Piece",
    "ToolPath",
    "cut_time_s",
    "kerf_um",
    "pillar_path",
    "polyline_length_um",
    "tab_path",
]

#: The laser's focused spot, 1/e^2 diameter (um).
DEFAULT_SPOT_UM = 40.0
#: Kerf width / spot at the lowest power that cuts through (the power is minimised).
KERF_FRACTION = 0.5


class PathError(ValueError):
    """A path the laser cannot cut: a feature narrower than the spot, outside the table."""


def kerf_um(spot_um: float, kerf_fraction: float = KERF_FRACTION) -> float:
    """Width of material removed along a path (um): ``kerf_fraction * spot_um``."""
    return float(spot_um) * float(kerf_fraction)


def polyline_length_um(x_um, y_um) -> float:
    """Length of the polyline through the vertices (um)."""
    x, y = np.asarray(x_um, dtype=float), np.asarray(y_um, dtype=float)
    return float(np.hypot(np.diff(x), np.diff(y)).sum())


def cut_time_s(length_um: float, speed_mm_s: float, passes: int = 1) -> float:
    """Seconds to cut ``length_um`` at ``speed_mm_s``, ``passes`` times."""
    if not speed_mm_s > 0:
        raise PathError(f"cutting speed must be > 0 mm/s, got {speed_mm_s}")
    return float(passes) * float(length_um) / (float(speed_mm_s) * 1000.0)


@dataclass(frozen=True)
class Piece:
    """The piece a cut frees, as the spot model predicts it.

    Attributes
    ----------
    tab_width_um, tab_length_um : float
        The tab (or pillar) across and along.
    handle_width_um, handle_length_um : float
    length_um : float
        The whole piece along ``y``.
    area_um2 : float
        Its top-view area (sharp corners; the rounded inner corners of a real cut
        leave ~0.2 r^2 more each).
    tab_mid_y_um : float
        ``y`` (path frame) of the tab's middle, where its width is measured.
    """

    tab_width_um: float
    tab_length_um: float
    handle_width_um: float
    handle_length_um: float
    length_um: float
    area_um2: float
    tab_mid_y_um: float


@dataclass(frozen=True)
class ToolPath:
    """A closed path for the laser's centre, with the piece it should free.

    Attributes
    ----------
    x_um, y_um : ndarray
        Vertices (um), closed.
    spot_um, kerf_um : float
    compensated : bool
        Offset outwards by half a kerf (the piece is the outline asked for).
    piece : Piece
        The piece the spot model predicts.
    origin_um : (float, float)
        Where the frame's origin is on the table (``moved``).
    kind : str
        ``"tab"`` or ``"pillar"``.
    """

    x_um: np.ndarray
    y_um: np.ndarray
    spot_um: float
    kerf_um: float
    compensated: bool
    piece: Piece
    origin_um: tuple[float, float] = (0.0, 0.0)
    kind: str = "tab"
    outline_um: tuple = field(default=(), compare=False)

    @property
    def length_um(self) -> float:
        """Length of the path (um)."""
        return polyline_length_um(self.x_um, self.y_um)

    @property
    def start_um(self) -> tuple[float, float]:
        """The first vertex: where the table must be when the cut starts."""
        return float(self.x_um[0]), float(self.y_um[0])

    @property
    def bounds_um(self) -> tuple[float, float, float, float]:
        """``(xmin, xmax, ymin, ymax)`` of the vertices."""
        return (float(self.x_um.min()), float(self.x_um.max()),
                float(self.y_um.min()), float(self.y_um.max()))  # fmt: skip

    def duration_s(self, speed_mm_s: float, passes: int = 1) -> float:
        """Seconds to cut the path at ``speed_mm_s``."""
        return cut_time_s(self.length_um, speed_mm_s, passes)

    def moved(self, x0_um: float, y0_um: float) -> ToolPath:
        """The same path with its frame's origin at table position ``(x0_um, y0_um)``."""
        return ToolPath(self.x_um + float(x0_um), self.y_um + float(y0_um), self.spot_um,
                        self.kerf_um, self.compensated, self.piece,
                        (self.origin_um[0] + float(x0_um), self.origin_um[1] + float(y0_um)),
                        self.kind, self.outline_um)  # fmt: skip

    def check_within(self, x_range: tuple[float, float], y_range: tuple[float, float]) -> None:
        """Raise :class:`PathError` unless the kerf stays within the table's ranges."""
        xmin, xmax, ymin, ymax = self.bounds_um
        half = self.kerf_um / 2.0
        for axis, low, high, lo_r, hi_r in (("x", xmin - half, xmax + half, *x_range),
                                            ("y", ymin - half, ymax + half, *y_range)):  # fmt: skip
            if lo_r == hi_r:  # no limits (EPICS convention)
                continue
            if low < lo_r or high > hi_r:
                raise PathError(
                    f"the cut spans {axis} {low:.1f}..{high:.1f} um, outside the table's "
                    f"range [{lo_r:g}, {hi_r:g}] um: move the origin"
                )


def _offset_polygon(x: np.ndarray, y: np.ndarray, distance: float):
    """Offset a closed counter-clockwise polygon outwards by ``distance`` (mitred corners).

    Each edge moves ``distance`` along its outward normal; a vertex moves to where
    its two edges meet again (``(n1 + n2) / (1 + n1.n2)``), exact for any corner.
    """
    px, py = x[:-1], y[:-1]
    dx, dy = np.roll(px, -1) - px, np.roll(py, -1) - py
    norm = np.hypot(dx, dy)
    nx, ny = dy / norm, -dx / norm  # outward normals of a CCW polygon
    pnx, pny = np.roll(nx, 1), np.roll(ny, 1)  # the edge arriving at each vertex
    scale = distance / (1.0 + nx * pnx + ny * pny)
    ox, oy = px + scale * (nx + pnx), py + scale * (ny + pny)
    return np.append(ox, ox[0]), np.append(oy, oy[0])


def _positive(name: str, value) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise PathError(f"{name} must be a finite number > 0, got {value}")
    return value


def tab_path(
    width_um: float,
    length_um: float,
    handle_width_um: float,
    handle_length_um: float,
    spot_um: float = DEFAULT_SPOT_UM,
    compensate: bool = True,
    *,
    kerf_fraction: float = KERF_FRACTION,
    kind: str = "tab",
) -> ToolPath:
    """The closed path freeing a tab ``width_um x length_um`` on a handle.

    Parameters
    ----------
    width_um, length_um : float
        The tab (the imaged part), across and along.
    handle_width_um, handle_length_um : float
        The handle the tab stands on (held by the sample mount).
    spot_um : float
        The laser's spot (1/e^2 diameter).
    compensate : bool
        Offset the path by half a kerf so that the piece is the outline asked for;
        False cuts along the outline (every edge loses half a kerf).
    kerf_fraction : float
        Kerf / spot.

    Raises
    ------
    PathError
        A tab narrower or shorter than the spot, a handle not wider than the tab
        by two spots, a bad number.
    """
    w, tab_l = _positive("width_um", width_um), _positive("length_um", length_um)
    hw, hl = (
        _positive("handle_width_um", handle_width_um),
        _positive("handle_length_um", handle_length_um),
    )
    spot = _positive("spot_um", spot_um)
    kerf = kerf_um(spot, _positive("kerf_fraction", kerf_fraction))
    if kerf > spot:
        raise PathError(f"kerf_fraction must be <= 1, got {kerf_fraction}")
    lost = 0.0 if compensate else kerf
    for name, value in (("width_um", w), ("length_um", tab_l)):
        if value - lost < spot:
            raise PathError(
                f"{kind} {name} {value:g} um{' (uncompensated)' if lost else ''} would come out "
                f"{value - lost:g} um, narrower than the {spot:g} um spot allows: the beam's "
                f"wings would burn it through"
            )
    if hw < w + 2 * spot:
        raise PathError(
            f"handle_width_um {hw:g} must exceed the {kind} width {w:g} um by two spots "
            f"({2 * spot:g} um) to hold it"
        )
    if hl - lost < spot:
        raise PathError(f"handle_length_um {hl:g} um is shorter than the {spot:g} um spot")
    outline_x = np.array([-hw / 2, hw / 2, hw / 2, w / 2, w / 2, -w / 2, -w / 2, -hw / 2,
                          -hw / 2])  # fmt: skip
    outline_y = np.array([0.0, 0.0, hl, hl, hl + tab_l, hl + tab_l, hl, hl, 0.0])
    if compensate:
        x, y = _offset_polygon(outline_x, outline_y, kerf / 2.0)
    else:
        x, y = outline_x.copy(), outline_y.copy()
    # Uncompensated, every edge of the piece moves in by half a kerf: the handle's
    # bottom up, its shoulders and the tab's end down, so the tab still stands tab_l
    # above the shoulders and the handle loses a kerf. The kerf rounds the piece's
    # two inner corners (tab meets shoulder) with its radius, keeping (1 - pi/4) r^2
    # each beyond the rectangles.
    pw, pl, phw, phl = w - lost, tab_l, hw - lost, hl - lost
    corners = 2.0 * (1.0 - math.pi / 4.0) * (lost / 2.0) ** 2
    piece = Piece(tab_width_um=pw, tab_length_um=pl, handle_width_um=phw, handle_length_um=phl,
                  length_um=phl + pl, area_um2=pw * pl + phw * phl + corners,
                  tab_mid_y_um=hl - lost / 2.0 + pl / 2.0)  # fmt: skip
    return ToolPath(x, y, spot, kerf, bool(compensate), piece, kind=kind,
                    outline_um=(tuple(outline_x), tuple(outline_y)))  # fmt: skip


def pillar_path(
    diameter_um: float,
    height_um: float,
    spot_um: float = DEFAULT_SPOT_UM,
    compensate: bool = True,
    *,
    handle_width_um: float = 1500.0,
    handle_length_um: float = 4000.0,
    sheet_thickness_um: float | None = None,
    kerf_fraction: float = KERF_FRACTION,
) -> ToolPath:
    """The top-view path of a pillar ``diameter_um`` wide and ``height_um`` long on a handle.

    The pillar lies in the sheet's plane, its axis along ``y``: the path is its
    outline in top view, a rectangle (a tab ``diameter_um`` wide, what the simulated
    material map records); its section is ``diameter_um`` by the sheet's thickness,
    so the diameter cannot exceed that thickness. Nothing here turns it round.

    Raises
    ------
    PathError
        As :func:`tab_path`, and a diameter beyond ``sheet_thickness_um``.
    """
    d = _positive("diameter_um", diameter_um)
    if sheet_thickness_um is not None and d > float(sheet_thickness_um):
        raise PathError(
            f"pillar diameter {d:g} um exceeds the sheet's thickness {sheet_thickness_um:g} um:"
            " it cannot be lathed round"
        )
    return tab_path(d, height_um, handle_width_um, handle_length_um, spot_um, compensate,
                    kerf_fraction=kerf_fraction, kind="pillar")  # fmt: skip
