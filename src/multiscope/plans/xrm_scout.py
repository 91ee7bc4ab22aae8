"""Scout and zoom: a survey tomogram picks a volume of interest, an interior tomogram images it.

Seed 001's multi-scale workflow: survey the whole cell non-destructively at low
resolution, choose a volume of interest (VOI) in it, then image that volume at high
resolution with the sample larger than the field of view (interior tomography).
:func:`scout_and_zoom` makes two runs:

1. the survey (:func:`~multiscope.plans.xrm.xrm_tomo_scan`, recipe ``survey``), with
   the sample's centre on the rotation axis (:data:`SURVEY_VOI_MM`, not wherever the
   last scan left the stage), reconstructed as soon as it stops, from the frames the
   camera wrote (read with :class:`~multiscope.frame_files.FrameReader` from the
   documents of the survey run only, as ``focus_calibration`` reads its own) by
   :mod:`multiscope.analysis.tomo` (flat and dark correction, ``-log``,
   :func:`~multiscope.analysis.tomo.find_center`,
   :func:`~multiscope.analysis.tomo.reconstruct`); the session's pipeline
   reconstructs it again in the background and stores that as a derived run;
2. the VOI: given coordinates ``(x, y, z)`` mm (no reconstruction needed), a callable
   on the survey volume returning a voxel ``(z, y, x)``, or ``"auto"``: the strongest
   departure from the cell's rotational symmetry
   (:func:`~multiscope.analysis.xrm_scout.rotational_anomaly`, e.g. an internal short
   circuit), converted to sample millimetres
   (:func:`~multiscope.analysis.xrm_scout.voxel_to_sample_mm`);
3. the zoom (recipe ``zoom``) with the VOI on the rotation axis at the beam centre.
   Its start document's ``scout`` block names the survey's uid and the VOI
   (``survey_uid``, ``voi_mm``, ``selection``, and for ``"auto"`` the ``score``).

Both recipes and all overrides are checked before the first message; a VOI outside
the stages' travel is refused before the zoom moves anything.
"""

import logging
from collections.abc import Callable

import numpy as np
from bluesky import preprocessors as bpp

from ..analysis.tomo import find_center, minus_log, normalize, reconstruct
from ..analysis.xrm_scout import rotational_anomaly, voxel_to_sample_mm
from ..contracts import ScoutBlock
from ..frame_files import FrameReader
from .preflight import PlanArgumentError, require_number
from .xrm import xrm_settings, xrm_tomo_scan

__all__ = ["SURVEY_VOI_MM", "scout_and_zoom"]

logger = logging.getLogger(__name__)

#: The survey's default volume of interest: the sample frame's origin, the sample's
#: centre, on the rotation axis. The symmetry scout needs the cell's axis there: the
#: reconstruction's artefacts centred on the rotation axis (the noise every projection
#: leaves at the axis) are then symmetric about the cell and cancel; with the cell off
#: the axis (a zoom leaves the stage at its VOI) they read as anomalies (a survey 1 mm
#: off centre scouted the rotation axis instead of the short, docs/xrm.md).
SURVEY_VOI_MM = (0.0, 0.0, 0.0)


def _selection(select) -> str:
    if isinstance(select, str):
        if select != "auto":
            raise PlanArgumentError(f'select must be "auto", (x, y, z) mm or a callable, '
                                    f"got {select!r}")  # fmt: skip
        return "auto"
    if callable(select):
        return "callable"
    try:
        values = tuple(select)
    except TypeError:
        raise PlanArgumentError(f"select must be 'auto', (x, y, z) mm or a callable, "
                                f"got {select!r}") from None  # fmt: skip
    if len(values) != 3:
        raise PlanArgumentError(f"select coordinates must be (x, y, z) mm, got {select!r}")
    for i, v in enumerate(values):
        require_number(f"select[{i}]", v)
    return "coordinates"


def scout_and_zoom(
    xrm,
    survey: str = "coin_survey",
    zoom: str = "coin_zoom",
    select: str | tuple | Callable = "auto",
    *,
    sample_id: str = "",
    survey_overrides: dict | None = None,
    zoom_overrides: dict | None = None,
    anomaly_options: dict | None = None,
    md: dict | None = None,
):
    """Survey, choose a volume of interest, zoom into it (two linked runs).

    Parameters
    ----------
    xrm : XRM
        The instrument bundle.
    survey, zoom : str
        Recipes (:data:`~multiscope.plans.xrm.XRM_RECIPES`).
    select : "auto", (x, y, z) or callable
        How the VOI is chosen: ``"auto"`` (the strongest symmetry anomaly),
        sample coordinates in mm, or ``select(volume) -> (z, y, x)`` voxel of the
        survey volume (attenuation per voxel, one slice per detector row).
    sample_id : str
        Recorded in both runs.
    survey_overrides, zoom_overrides : dict, optional
        Keyword overrides of :func:`~multiscope.plans.xrm.xrm_tomo_scan` per run (e.g.
        ``{"n_projections": 121, "binning": 8}``). The survey's ``voi_mm`` defaults to
        :data:`SURVEY_VOI_MM` (the sample's centre), whatever the stage's position.
    anomaly_options : dict, optional
        Keywords of :func:`~multiscope.analysis.xrm_scout.rotational_anomaly`.
    md : dict, optional
        Merged over both runs' metadata.

    Returns
    -------
    tuple of str
        The survey's and the zoom's run uids.
    """
    how = _selection(select)
    survey_overrides = {"voi_mm": SURVEY_VOI_MM, **(survey_overrides or {})}
    zoom_overrides = dict(zoom_overrides or {})
    for name, overrides in (("survey_overrides", survey_overrides),
                            ("zoom_overrides", zoom_overrides)):  # fmt: skip
        if "voi_mm" in overrides and name == "zoom_overrides":
            raise PlanArgumentError("the zoom's voi_mm comes from select, not zoom_overrides")
    # Both recipes checked before anything moves (the zoom's VOI once it is known).
    _check = {k: v for k, v in survey_overrides.items() if k in _SETTING_KEYS}
    xrm_settings(xrm, survey, **_rename(_check))
    _check = {k: v for k, v in zoom_overrides.items() if k in _SETTING_KEYS}
    xrm_settings(xrm, zoom, **_rename(_check))
    if how == "coordinates":
        xrm_settings(xrm, zoom, **_rename(_check), voi_mm=tuple(float(v) for v in select))
    anomaly_options = dict(anomaly_options or {})

    frames = _SurveyFrames(f"{xrm.camera.name}_image", xrm.sample.theta.name)
    survey_plan = xrm_tomo_scan(xrm, survey, sample_id=sample_id, md=md, **survey_overrides)
    if how != "coordinates":
        survey_plan = bpp.subs_wrapper(survey_plan, frames)
    survey_uid = yield from survey_plan

    score = voxel = center = None
    if how == "coordinates":
        voi = tuple(float(v) for v in select)
    else:
        volume, center = frames.reconstruct()
        survey_settings = xrm_settings(xrm, survey, **_rename(
            {k: v for k, v in survey_overrides.items() if k in _SETTING_KEYS}))  # fmt: skip
        if how == "auto":
            anomaly = rotational_anomaly(volume, **anomaly_options)
            index = anomaly.index
            score = anomaly.score
        else:
            index = tuple(float(v) for v in select(volume))
        voi = voxel_to_sample_mm(index, volume.shape, survey_settings.pixel_um,
                                 survey_settings.voi_mm)  # fmt: skip
        voxel = tuple(index)
    scout = ScoutBlock(
        survey_uid=survey_uid,
        survey_recipe=survey,
        selection=how,
        voi_mm=tuple(voi),
        score=score,
        voxel=voxel,
        survey_center_px=center,
    )
    logger.info("scout_and_zoom: VOI %s mm (%s) from survey %s", voi, how, survey_uid)
    zoom_md = {**(md or {}), "scout": scout.to_md()}
    zoom_uid = yield from xrm_tomo_scan(xrm, zoom, voi_mm=voi, sample_id=sample_id, md=zoom_md,
                                        **zoom_overrides)  # fmt: skip
    return survey_uid, zoom_uid


#: xrm_tomo_scan keywords that xrm_settings checks (``source_filter`` is its ``filter``).
_SETTING_KEYS = ("n_projections", "objective", "binning", "exposure_s", "source_filter", "kv",
                 "power_w", "pixel_um", "odd_mm", "sod_mm", "voi_mm", "sample_out_mm",
                 "sample_radius_mm")  # fmt: skip


def _rename(overrides: dict) -> dict:
    renamed = dict(overrides)
    if "source_filter" in renamed:
        renamed["filter"] = renamed.pop("source_filter")
    return renamed


class RepeatedFramesError(RuntimeError):
    """The survey's projections read back repeated: they are not the frames the camera wrote."""


class _SurveyFrames:
    """The survey run's frames from the documents (subscribed for that run only)."""

    def __init__(self, image_key: str, angle_key: str):
        self.image_key, self.angle_key = image_key, angle_key
        self._reader = FrameReader()
        self._streams: dict[str, str] = {}  # descriptor uid -> stream name
        self._resources: set[str] = set()
        self._datums: list[dict] = []
        self._angles: dict[int, float] = {}  # primary seq_num -> angle (deg)

    def __call__(self, name: str, doc: dict) -> None:
        if name == "descriptor":
            self._streams[doc["uid"]] = doc.get("name", "")
            self._reader.add_descriptor(doc)
        elif name == "stream_resource" and doc.get("data_key") == self.image_key:
            self._resources.add(doc["uid"])
            self._reader.add_resource(doc)
        elif name == "stream_datum" and doc.get("stream_resource") in self._resources:
            self._datums.append(doc)
        elif name == "event" and self._streams.get(doc["descriptor"]) == "primary":
            self._angles[int(doc["seq_num"])] = float(doc["data"][self.angle_key])

    def _stack(self, stream: str, attributes=()) -> tuple[np.ndarray, dict]:
        blocks = [self._reader.read(d, attributes=attributes) for d in self._datums
                  if self._streams.get(d["descriptor"]) == stream]  # fmt: skip
        if not blocks:
            raise RuntimeError(f"the survey has no {stream} frames: no VOI")
        data = np.concatenate([b.data for b in blocks]).astype(np.float32)
        attrs = {k: np.concatenate([b.attributes[k] for b in blocks])
                 for k in attributes if all(k in b.attributes for b in blocks)}  # fmt: skip
        return data, attrs

    def reconstruct(self) -> tuple[np.ndarray, float]:
        """The survey volume (attenuation per voxel) and its rotation-axis column.

        Raises
        ------
        RepeatedFramesError
            If projections (or their NDArrayUniqueId) repeat: they were read wrong.
        """
        try:
            projections, attrs = self._stack("primary", ("theta", "NDArrayUniqueId"))
            flats, _ = self._stack("flat")
            darks, _ = self._stack("dark")
        finally:
            self._reader.close_files()
        # Noise makes every real frame unique: a repeated one (or id) is a wrong read, which
        # would pick a wrong VOI silently (frame_files' docstring: a dataset refreshed while
        # open twice read every frame as the first). Cheap, and it fails loudly.
        repeats = len(projections) - len({frame.tobytes() for frame in projections})
        ids = attrs.get("NDArrayUniqueId")
        if ids is not None:
            repeats = max(repeats, ids.size - np.unique(ids).size)
        if repeats:
            raise RepeatedFramesError(f"{repeats} of the survey's {len(projections)} projections "
                                      f"repeat another: no VOI from them")  # fmt: skip
        if "theta" in attrs:
            theta = attrs["theta"]
        else:  # one angle per event, in order
            theta = np.asarray([self._angles[k] for k in sorted(self._angles)])
        angles = np.deg2rad(theta[-len(projections) :])
        line_integrals = minus_log(normalize(projections, flats, darks))
        center = float(find_center(line_integrals, angles))
        return reconstruct(line_integrals, angles, center=center), center
