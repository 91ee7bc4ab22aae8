"""The run contracts as code: the blocks a run's start document carries for its analysis.

A plan and the callbacks that analyse its runs meet only in the documents
(``docs/decisions/0006-xanes-run-documents.md``): the plan writes a block of the
start document, a callback reads it back, live or from the catalog. Each block
is one dataclass here, used by both sides, so the keys cannot drift apart:

=================  =====================================  ==========================
block              written by                             read by
=================  =====================================  ==========================
``tomo``           ``tomo_scan``, ``fly_tomo_scan``,      the tomography and XANES
                   ``xanes_3d``                           callbacks
``xanes``          ``xanes_2d``, ``xanes_3d``             the XANES maps
``mosaic``         ``vertical_mosaic_tomo`` (per tile)    the mosaic stitcher
``slice_and_view`` ``slice_and_view`` (each run of a      the slice-and-view
                   sample, a resume too)                  assembler
``laser_cut``      ``cut_tab``, ``lathe_pillar``          whoever follows a sample
                                                          from the mill to the TXM
``xrm``            ``xrm_tomo_scan`` (the survey and the  the sample history, the
                   zoom of ``scout_and_zoom`` too)        scout's scores
``scout``          ``scout_and_zoom`` (its zoom run)      the sample history, the
                                                          scout's scores
=================  =====================================  ==========================

``to_md()`` gives the plain-JSON dict the start document holds (the layout of
decision 0006, unchanged); ``from_md()`` reads one back. ``from_md`` is lenient
as a reader must be: a key a run lacks takes its default (``None`` for what the
run did not record) and keys this version does not know are kept in ``extra``,
so ``from_md(md).to_md() == md`` for every block a plan wrote.

This module sits outside the layers (decision 0001): it imports nothing from
``multiscope``, so plans and callbacks alike may import it.

Examples
--------
>>> block = TomoBlock(num_projections=181, angle_range_deg=180.0, exposure_s=0.05)
>>> TomoBlock.from_md(block.to_md()) == block
True
>>> block.to_md()["rotation"]
'sample_theta'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "LaserCutBlock",
    "MosaicBlock",
    "ScoutBlock",
    "SliceViewBlock",
    "TomoBlock",
    "XanesBlock",
    "XrmBlock",
]


class _Block:
    """``to_md`` / ``from_md`` shared by the blocks (dataclasses)."""

    #: Fields written only when set (a key some plans' blocks do not have at all).
    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    def to_md(self) -> dict[str, Any]:
        """The block as the start document holds it (plain JSON types)."""
        md: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name in self.OPTIONAL and value is None:
                continue
            md[f.name] = list(value) if isinstance(value, tuple) else value
        md.update(self.extra)
        return md

    @classmethod
    def from_md(cls, md: dict | None):
        """Read a block back from a start document's dict (missing keys: defaults)."""
        md = dict(md or {})
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {}
        for name in names & set(md):
            value = md.pop(name)
            known[name] = tuple(value) if isinstance(value, list) else value
        return cls(**known, extra=md)


@dataclass(frozen=True)
class TomoBlock(_Block):
    """The ``tomo`` block: a tomogram's geometry and acquisition (what reconstruction reads).

    Attributes
    ----------
    num_projections : int
        Projections per tomogram.
    angle_range_deg, start_deg : float
        Rotation span and first angle.
    exposure_s : float
        Exposure per frame.
    num_darks, num_flats : int
        Frames per dark and per flat set.
    flat_policy, dark_policy : str
        When the sets are taken (``plans.tomography.FLAT_POLICIES``).
    flat_every : int or None
        Projections between flat sets (policy ``"every"``).
    sample_out_offset_um : float
        Sample move for the flats.
    pixel_size_um, energy_keV, center_guess_px : float or None
        Geometry, when known.
    sample_id : str
    rotation : str
        Data key of the rotation angle in the events.
    scan_mode : {"step", "fly"} or None
        Written by ``xanes_3d`` only (a tomography run's plan name says it).
    frame_period_s, theta_velocity_deg_s : float or None
        Fly scans only.
    extra : dict
        Keys this version does not know (kept for the round trip).
    """

    OPTIONAL: ClassVar[tuple[str, ...]] = ("scan_mode", "frame_period_s", "theta_velocity_deg_s")

    num_projections: int | None = None
    angle_range_deg: float | None = None
    start_deg: float | None = None
    exposure_s: float | None = None
    num_darks: int | None = None
    num_flats: int | None = None
    flat_policy: str | None = None
    flat_every: int | None = None
    dark_policy: str | None = None
    sample_out_offset_um: float | None = None
    pixel_size_um: float | None = None
    energy_keV: float | None = None  # noqa: N815 - unit spelling, as the stored key
    center_guess_px: float | None = None
    sample_id: str | None = None
    rotation: str = "sample_theta"
    scan_mode: str | None = None
    frame_period_s: float | None = None
    theta_velocity_deg_s: float | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def is_fly(self) -> bool:
        """A fly tomogram (``xanes_3d`` with ``scan_mode == "fly"``)."""
        return self.scan_mode == "fly"


@dataclass(frozen=True)
class XanesBlock(_Block):
    """The ``xanes`` block of decision 0006: the grid, the windows, the flats, the data keys.

    Attributes
    ----------
    edge : str
        Element symbol of the edge.
    edge_keV : float
    energies_keV : tuple of float
        The grid, strictly increasing, in scan order.
    pre_edge_keV, post_edge_keV, whiteline_keV : tuple of float
        Normalisation windows and the whiteline search window ``(low, high)``.
    flat_policy : {"every", "every_n", "interpolate"}
    flat_every : int or None
    num_frames, num_flats, num_darks : int or None
        Sample frames per energy, flats per set, darks.
    image_field, energy_field, energy_index_field : str
        Data keys of the frames, the energy readback and the energy index.
    pixel_size_um : float or None
    sample_id : str or None
    extra : dict
        Keys this version does not know.
    """

    edge: str | None = None
    edge_keV: float | None = None  # noqa: N815
    energies_keV: tuple[float, ...] = ()  # noqa: N815
    pre_edge_keV: tuple[float, float] | None = None  # noqa: N815
    post_edge_keV: tuple[float, float] | None = None  # noqa: N815
    whiteline_keV: tuple[float, float] | None = None  # noqa: N815
    flat_policy: str = "every"
    flat_every: int | None = None
    num_frames: int | None = None
    num_flats: int | None = None
    num_darks: int | None = None
    image_field: str = "camera_image"
    energy_field: str = "energy_energy"
    energy_index_field: str = "xanes_energy_index"
    pixel_size_um: float | None = None
    sample_id: str | None = None
    extra: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class MosaicBlock(_Block):
    """The ``mosaic`` block of each tile of a vertical mosaic tomography.

    Attributes
    ----------
    mosaic_id : str
        Shared by the tiles of one mosaic.
    tile_index, num_tiles : int
    z_um : float
        Sample stage height of the tile.
    tile_height_um, overlap_fraction : float
    z_direction : str
        What increasing ``z_um`` means for the image.
    extra : dict
        Keys this version does not know.
    """

    mosaic_id: str | None = None
    tile_index: int | None = None
    num_tiles: int | None = None
    z_um: float | None = None
    tile_height_um: float | None = None
    overlap_fraction: float | None = None
    z_direction: str = "sample stage z up: the field of view moves down the sample"
    extra: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class SliceViewBlock(_Block):
    """The ``slice_and_view`` block: a serial-sectioning run's slices, fields and channels.

    Streams of such a run (one event per slice and modality; frames in HDF5):
    ``mill`` (one event per cut), ``sem`` (``sem_image``: CBS then TLD,
    ``[2, ny, nx]``), ``eds`` (``eds_image``: one frame per line of ``eds_lines``),
    ``sims`` (``sims_image``: one frame per mass of ``sims_masses``), ``depth`` (one
    event at the end), ``kintsugi`` (one per Pt infiltration). Every event holds
    ``slice_number`` (the slice whose face it shows, or the cut), the instrument's
    ``mill_face_depth_um`` and ``mill_slices_milled``, ``stage_pose``,
    ``stage_tilt``, ``stage_rot``, ``ion_column_beam`` and the beam shift applied
    (``electron_column_beam_shift_x_um``, ``electron_column_beam_shift_y_um``); the
    frames' files hold per-frame ``channel`` and ``face_depth_um`` attributes.

    Attributes
    ----------
    n_slices : int
        Slices of the whole series (a resume keeps the first run's).
    first_slice : int
        Number (1-based) of the first slice this run mills (a resume: the next unmilled).
        Slices are numbered by the instrument's count of cuts since the sample was loaded.
    series_first_slice : int
        Number of the series' first slice (the first run's ``first_slice``).
    slice_thickness_um : float
        Nominal thickness of one slice.
    start_depth_um : float
        The IOC's face depth when this run began.
    sem_pixel_um, eds_pixel_um, sims_pixel_um : float
        Pixel sizes on the face.
    sem_channels, eds_lines, sims_masses : tuple of str
        Frame order of each modality's acquisition.
    eds_every, sims_every : int
        A slice is mapped when ``slice_number % every == 0`` (0: never).
    fiducial_px : tuple of int or None
        ``(row0, row1, col0, col1)`` of the fiducial window in SEM pixels.
    kintsugi : bool
        Pores infiltrated with Pt before slicing.
    resume_of : str or None
        Start uid of the series' first run when this run continues it.
    sample_id : str or None
    extra : dict
        Keys this version does not know (kept for the round trip).
    """

    OPTIONAL: ClassVar[tuple[str, ...]] = ("resume_of",)

    n_slices: int | None = None
    first_slice: int = 1
    series_first_slice: int = 1
    slice_thickness_um: float | None = None
    start_depth_um: float = 0.0
    sem_pixel_um: float | None = None
    eds_pixel_um: float | None = None
    sims_pixel_um: float | None = None
    sem_channels: tuple[str, ...] = ("cbs", "tld")
    eds_lines: tuple[str, ...] = ()
    sims_masses: tuple[str, ...] = ()
    eds_every: int = 1
    sims_every: int = 1
    fiducial_px: tuple[int, ...] | None = None
    kintsugi: bool = False
    resume_of: str | None = None
    sample_id: str | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def series_uid(self) -> str | None:
        """The first run's uid when this run continues it (None: this run is the first)."""
        return self.resume_of


@dataclass(frozen=True)
class LaserCutBlock(_Block):
    """The ``laser_cut`` block: one sample cut free by the laser mill (a tab or a pillar).

    The run's stream ``cut`` has one event after the cut: the instrument's measured
    piece (``piece_row_width_um``: the tab's width at its middle, ``piece_area_um2``,
    ``piece_width_um``, ``piece_length_um``, ``piece_count``), the cut's
    ``cut_count``, ``cut_last_complete`` and ``cut_fraction``, and the laser's
    ``source_power_W`` and ``source_speed_mm_s``.

    Attributes
    ----------
    kind : {"tab", "pillar"}
    cut_number : int
        The instrument's number of this cut (its count of cuts since the sheet was
        loaded).
    width_um, length_um, handle_width_um, handle_length_um : float
        The geometry asked for (a pillar: its diameter and height).
    compensated : bool
        The path was offset by half a kerf (the piece is the geometry asked for).
    expected_tab_width_um, expected_area_um2 : float
        The piece the spot model predicts.
    spot_um, kerf_um : float
    origin_um : tuple of float
        The table position of the path frame's origin (the handle's bottom centre).
    tab_mid_y_um : float
        Table y of the row where the tab's width is measured.
    path_x_um, path_y_um : tuple of float
        The tool path's vertices (table um).
    power_W, speed_mm_s : float
    estimated_cut_s : float
    material : str or None
    energy_keV, target_width_um : float or None
        The imaging energy and the width of two attenuation lengths there, if given.
    argon : bool or None
        The sheet was sealed under argon (glass lid).
    sample_id : str or None
    extra : dict
        Keys this version does not know.
    """

    kind: str = "tab"
    cut_number: int | None = None
    width_um: float | None = None
    length_um: float | None = None
    handle_width_um: float | None = None
    handle_length_um: float | None = None
    compensated: bool = True
    expected_tab_width_um: float | None = None
    expected_area_um2: float | None = None
    spot_um: float | None = None
    kerf_um: float | None = None
    origin_um: tuple[float, float] | None = None
    tab_mid_y_um: float | None = None
    path_x_um: tuple[float, ...] = ()
    path_y_um: tuple[float, ...] = ()
    power_W: float | None = None  # noqa: N815 - unit spelling
    speed_mm_s: float | None = None
    estimated_cut_s: float | None = None
    material: str | None = None
    energy_keV: float | None = None  # noqa: N815
    target_width_um: float | None = None
    argon: bool | None = None
    sample_id: str | None = None
    extra: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class XrmBlock(_Block):
    """The ``xrm`` block: a lab XRM tomogram's recipe, source and geometry.

    The tomography itself (projections, darks, flats, exposure) is in the run's
    ``tomo`` block (:class:`TomoBlock`), which the reconstruction reads.

    Attributes
    ----------
    recipe : str
        The recipe's name (``plans.xrm.XRM_RECIPES``).
    objective : str
        The turret's objective (``"0.4x"``, ``"4x"``, ``"20x"``).
    binning : int
    exposure_s : float
    filter : str
        The source filter (``"LE1"`` ... ``"HE6"``).
    kv, power_w : float
        Source voltage (kV) and power (W).
    n_projections : int
    pixel_um : float
        The pixel the geometry gives (um).
    sod_mm, odd_mm : float
        Source-object and object-detector distances.
    voi_mm : tuple of float
        The sample point put on the rotation axis and the beam centre (x, y, z).
    sample_out_mm : float
        Sample move for the flats.
    sample_radius_mm : float
        The sample's radius (its clearance from the source is checked with it).
    geometric_magnification : float
        ``(SOD + ODD) / SOD``.
    extra : dict
        Keys this version does not know.
    """

    recipe: str | None = None
    objective: str | None = None
    binning: int | None = None
    exposure_s: float | None = None
    filter: str | None = None
    kv: float | None = None
    power_w: float | None = None
    n_projections: int | None = None
    pixel_um: float | None = None
    sod_mm: float | None = None
    odd_mm: float | None = None
    voi_mm: tuple[float, float, float] | None = None
    sample_out_mm: float | None = None
    sample_radius_mm: float | None = None
    geometric_magnification: float | None = None
    extra: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class ScoutBlock(_Block):
    """The ``scout`` block of a scout-and-zoom's zoom run: where its VOI came from.

    Attributes
    ----------
    survey_uid : str
        The survey run (the low-resolution tomogram the VOI was chosen on).
    survey_recipe : str
    selection : {"auto", "callable", "coordinates"}
        How the VOI was chosen.
    voi_mm : tuple of float
        The VOI's centre in sample coordinates (x, y, z), mm; the zoom's
        ``xrm.voi_mm``.
    score : float or None
        The anomaly's strength in noise sigmas (``"auto"`` only).
    voxel : tuple of float or None
        The VOI in the survey volume (slice, row, column); not for coordinates.
    survey_center_px : float or None
        The survey's rotation centre, found from its frames.
    extra : dict
        Keys this version does not know.
    """

    OPTIONAL: ClassVar[tuple[str, ...]] = ("score", "voxel", "survey_center_px")

    survey_uid: str | None = None
    survey_recipe: str | None = None
    selection: str | None = None
    voi_mm: tuple[float, float, float] | None = None
    score: float | None = None
    voxel: tuple[float, ...] | None = None
    survey_center_px: float | None = None
    extra: dict = field(default_factory=dict, compare=False)
