"""The PFIB-SEM chamber's sample: what a cut does to it and what each detector sees.

Pure (no caproto): :class:`SampleState` is the state a resume trusts (slices, polish
cuts, nominal and true face depth, drift, Pt), :class:`FibsemScene` renders a face
for SEM (CBS + TLD), EDS (one map per line) and SIMS (one map per mass).

Cuts
----
* A cut of nominal thickness ``t`` removes ``t (1 + 0.03 g)`` (``g`` standard normal):
  the nominal depth (``face_depth_um``, what the instrument believes) is the sum of
  nominal cuts, the true depth (what the renderers use) the sum of true ones.
* Each cut moves the sample under the beams by a random-walk step of
  ``DRIFT_STEP_UM`` (0.04 um) per axis (the true drift, ground truth).
* A stopped cut advances both depths pro rata (fraction of its duration) and still
  counts (``last_complete`` False).
* The random draws of cut ``n`` come from ``default_rng([seed, 7, n])``, so a state
  reloaded after an IOC restart continues the same sequence.
* Pt deposition (kintsugi) fills the open pores from the true face depth down to
  ``PT_INFILTRATION_UM`` (3 um) below it (:attr:`FaceState.pt_filled`) and leaves a Pt
  cap of the deposited thickness on the face: every face image is Pt until a cut
  removes it. A polish removes the cap first and mills the rest of its depth into the
  sample; a slice removes the whole cap and its full thickness of sample.

Sputter yield (Xe+, 30 kV, um^3 of sample removed per nC; porous composites mill
faster per volume than dense ceramics, Xe+ on dense oxides is ~0.5-1 um^3/nC):
``assb`` 2.0, ``nmc`` and ``tab`` (the same NMC811 cathode) 1.6. A cut's duration
(instrument seconds) is ``width * height * thickness / (yield * current_nA)``.

Field geometry (face coordinates, um: ``x`` along image columns, ``y`` along image
rows, the phantom's frame; see :class:`FieldGeometry`)
----------------------------------------------------------------------------------
Every field is centred on the face centre (22, 22) of the default 44 x 44 x 12 um
block: SEM 384 x 512 at 50 nm (19.2 x 25.6 um), EDS 216 x 352 at 81.4 nm
(17.6 x 28.7 um), SIMS 500 x 500 at 72 nm (36 x 36 um, from 4 to 40 um: the block
holds it with 4 um to spare, more than any drift of a run). A field's origin (outer
corner of its first pixel) is the nominal origin + the true drift - the beam shift
(SEM and EDS use the electron beam's shift; SIMS the ion beam's, none here).

A protective Pt cap band lies on the sample across the whole face width between
``cap_y_um`` (2 um above the SEM field's nominal top) and 3 um below the SEM field's
nominal top, so the SEM field's top ~60 rows show bright Pt; a milled "X" (two grooves
0.25 um wide, arms 2.4 um long, dark: empty) sits in it at ``fiducial_um`` (3 um
from the SEM field's left edge): the fiducial for drift correction. The cap and the X
are on the sample, so they move with the drift.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .serial_phantom import LABEL, SerialPhantom, make_serial_phantom
from .serial_render import EDS_LINES, FaceState, bse_images, eds_maps, sims_maps

__all__ = [
    "DEFAULT_SIZE_UM",
    "DRIFT_STEP_UM",
    "PT_INFILTRATION_UM",
    "SPUTTER_YIELD_UM3_PER_NC",
    "THICKNESS_ERROR",
    "FibsemScene",
    "FieldGeometry",
    "SampleState",
    "mill_time_s",
]

DEFAULT_SIZE_UM = (44.0, 44.0, 12.0)
THICKNESS_ERROR = 0.03  # relative sigma of a cut's true thickness
DRIFT_STEP_UM = 0.04  # random-walk step of the sample per cut and axis (sigma)
PT_INFILTRATION_UM = 3.0  # depth below the face that deposited Pt fills open pores
SIMS_REFERENCE_CURRENT_NA = 1.0  # primary ion current of serial_render.SIMS_COUNTS_PER_S
SPUTTER_YIELD_UM3_PER_NC = {"assb": 2.0, "nmc": 1.6, "tab": 1.6}  # Xe+ 30 kV (module notes)
STATE_VERSION = 1


def mill_time_s(width_um, height_um, thickness_um, yield_um3_per_nc, current_na) -> float:
    """One cut's duration (instrument s): volume / (yield * current); inf at no current."""
    rate = float(yield_um3_per_nc) * float(current_na)  # um^3/s
    volume = float(width_um) * float(height_um) * float(thickness_um)
    return volume / rate if rate > 0 else math.inf


@dataclass(frozen=True)
class FieldGeometry:
    """Where each detector's field sits on the face at zero drift (the one place).

    Origins are ``(y, x)`` of the outer corner of the first pixel, um; shapes
    ``(ny, nx)``; pixels um. Defaults: the fields centred on ``centre_um``.
    """

    centre_um: tuple[float, float] = (22.0, 22.0)
    sem_shape: tuple[int, int] = (384, 512)
    sem_pixel_um: float = 0.050
    eds_shape: tuple[int, int] = (216, 352)
    eds_pixel_um: float = 0.0814
    sims_shape: tuple[int, int] = (500, 500)
    sims_pixel_um: float = 0.072
    cap_above_um: float = 2.0  # the Pt cap band starts this far above the SEM field
    cap_into_um: float = 3.0  # ... and reaches this far into it
    fiducial_from_left_um: float = 3.0
    fiducial_arm_um: float = 2.4
    fiducial_groove_um: float = 0.25

    def origin_um(self, shape, pixel_um) -> tuple[float, float]:
        """Nominal origin of a field of ``shape`` at ``pixel_um`` centred on the face."""
        return (self.centre_um[0] - shape[0] * pixel_um / 2,
                self.centre_um[1] - shape[1] * pixel_um / 2)  # fmt: skip

    @property
    def sem_origin_um(self) -> tuple[float, float]:
        """Nominal SEM field origin (the cap band and the fiducial are placed from it)."""
        return self.origin_um(self.sem_shape, self.sem_pixel_um)

    @property
    def cap_y_um(self) -> tuple[float, float]:
        """The Pt cap band's extent in y (top, bottom)."""
        top = self.sem_origin_um[0]
        return (top - self.cap_above_um, top + self.cap_into_um)

    @property
    def fiducial_um(self) -> tuple[float, float]:
        """Centre ``(y, x)`` of the milled X in the cap band."""
        top, bottom = self.cap_y_um
        return ((top + bottom) / 2 + self.cap_above_um / 2,
                self.sem_origin_um[1] + self.fiducial_from_left_um)  # fmt: skip


@dataclass
class SampleState:
    """What the chamber has done to the sample (JSON-able; see the module notes)."""

    kind: str = "assb"
    seed: int = 0
    size_um: tuple[float, float, float] = DEFAULT_SIZE_UM
    tab_width_um: float | None = None  # the "tab" phantom's width (None for the others)
    slices: int = 0
    polishes: int = 0
    face_depth_um: float = 0.0  # nominal
    true_depth_um: float = 0.0
    drift_x_um: float = 0.0
    drift_y_um: float = 0.0
    pt_filled: list[list[float]] = field(default_factory=list)  # true-depth intervals
    filled_to_um: float = 0.0  # nominal depth of the deepest Pt-filled pores
    cap_um: float = 0.0
    last_complete: bool = True

    @property
    def cuts(self) -> int:
        """Cuts started so far (slices and polish cuts): the index of the next draw."""
        return self.slices + self.polishes

    def face_state(self) -> FaceState:
        """The renderers' view of the Pt fill."""
        return FaceState([(float(lo), float(hi)) for lo, hi in self.pt_filled])

    def start_cut(self, polish: bool = False) -> None:
        """Count a cut as started (it counts even if stopped); it is incomplete until done."""
        if polish:
            self.polishes += 1
        else:
            self.slices += 1
        self.last_complete = False

    def finish_cut(self, nominal_um: float, fraction: float = 1.0, polish: bool = False) -> None:
        """Apply the started cut: ``fraction`` of ``nominal_um`` (1: it ran to the end).

        Uses the draws of cut ``cuts - 1`` (the one :meth:`start_cut` counted).
        """
        fraction = min(max(float(fraction), 0.0), 1.0)
        rng = np.random.default_rng([int(self.seed), 7, self.cuts - 1])
        error, step_x, step_y = rng.standard_normal(3)
        removed = float(nominal_um) * fraction
        if polish:  # the cap goes first, the rest is sample
            from_cap = min(self.cap_um, removed)
            self.cap_um -= from_cap
            removed -= from_cap
        elif fraction > 0:
            self.cap_um = 0.0
        self.face_depth_um += removed
        self.true_depth_um += removed * (1.0 + THICKNESS_ERROR * error)
        self.drift_x_um += DRIFT_STEP_UM * step_x * fraction
        self.drift_y_um += DRIFT_STEP_UM * step_y * fraction
        self.last_complete = fraction >= 1.0

    def deposit(self, thickness_um: float, infiltration_um: float = PT_INFILTRATION_UM) -> None:
        """Deposit Pt: a cap on the face and pores filled ``infiltration_um`` deep."""
        self.cap_um += float(thickness_um)
        self.pt_filled.append([self.true_depth_um, self.true_depth_um + infiltration_um])
        self.filled_to_um = max(self.filled_to_um, self.face_depth_um + infiltration_um)

    def to_dict(self) -> dict:
        """The state as JSON-able values."""
        out = asdict(self)
        out["size_um"] = list(self.size_um)
        out["version"] = STATE_VERSION
        return out

    @classmethod
    def from_dict(cls, data: dict) -> SampleState:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data.pop("version", None)
        data["size_um"] = tuple(float(v) for v in data["size_um"])
        data["pt_filled"] = [[float(a), float(b)] for a, b in data.get("pt_filled", [])]
        return cls(**data)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a temporary file beside ``path``, then ``os.replace``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SampleState:
        """Read a state written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


class _CappedFace:
    """The phantom seen through the chamber: the Pt cap band with its milled X, and the
    deposited Pt cap over the whole face while one is left (duck-types SerialPhantom)."""

    fractions = SerialPhantom.fractions

    def __init__(self, phantom: SerialPhantom, geometry: FieldGeometry, capped: bool):
        self.phantom, self.geometry, self.capped = phantom, geometry, capped

    def labels(self, depth_um, shape, pixel_um, origin_um=(0.0, 0.0), *, sub: int = 1):
        out = self.phantom.labels(depth_um, shape, pixel_um, origin_um, sub=sub)
        if self.capped:
            out[:] = LABEL["pt"]
            return out
        step = pixel_um / sub
        y = origin_um[0] + (np.arange(out.shape[0]) + 0.5) * step
        top, bottom = self.geometry.cap_y_um
        rows = (y >= top) & (y < bottom)
        if not rows.any():
            return out
        x = origin_um[1] + (np.arange(out.shape[1]) + 0.5) * step
        out[rows] = LABEL["pt"]
        g = self.geometry
        dy = y[rows][:, None] - g.fiducial_um[0]
        dx = x[None, :] - g.fiducial_um[1]
        half = g.fiducial_arm_um / 2
        inside = (np.abs(dx) <= half) & (np.abs(dy) <= half)
        groove = (np.abs(dy - dx) < g.fiducial_groove_um * math.sqrt(0.5)) | (
            np.abs(dy + dx) < g.fiducial_groove_um * math.sqrt(0.5)
        )
        band = out[rows]
        band[inside & groove] = LABEL["groove"]
        out[rows] = band
        return out


@dataclass
class FibsemScene:
    """Renders the sample's face for each detector (see the module notes)."""

    phantom: SerialPhantom
    geometry: FieldGeometry = field(default_factory=FieldGeometry)

    @classmethod
    def build(cls, kind: str = "assb", seed: int = 0, size_um=DEFAULT_SIZE_UM,
              tab_width_um: float | None = None) -> FibsemScene:  # fmt: skip
        """The phantom for ``kind``/``seed``/``size_um`` (and the tab's width; see
        :func:`~.serial_phantom.make_serial_phantom`), deterministic, and the fields."""
        return cls(make_serial_phantom(kind, tuple(size_um), int(seed),
                                       tab_width_um=tab_width_um))  # fmt: skip

    def face(self, state: SampleState) -> _CappedFace:
        """The face as the detectors see it (cap band, fiducial, deposited Pt)."""
        return _CappedFace(self.phantom, self.geometry, state.cap_um > 1e-9)

    def field_origin_um(self, state, shape, pixel_um, beam_shift_um=(0.0, 0.0)):
        """Origin ``(y, x)`` of a field: nominal + true drift - beam shift ``(x, y)``."""
        y0, x0 = self.geometry.origin_um(shape, pixel_um)
        return (y0 + state.drift_y_um - beam_shift_um[1],
                x0 + state.drift_x_um - beam_shift_um[0])  # fmt: skip

    def sem(self, state, shape=None, pixel_um=None, *, beam_shift_um=(0.0, 0.0),
            dwell_us=3.0, current_nA=1.6,  # noqa: N803 - serial_render's name
            rng=None) -> dict[str, np.ndarray]:  # fmt: skip
        """CBS and TLD frames (uint16, ``shape``) and truth labels of the face."""
        shape = tuple(shape or self.geometry.sem_shape)
        pixel_um = pixel_um or self.geometry.sem_pixel_um
        origin = self.field_origin_um(state, shape, pixel_um, beam_shift_um)
        return bse_images(self.face(state), state.true_depth_um, shape, pixel_um, origin,
                          state=state.face_state(), dwell_us=dwell_us, current_nA=current_nA,
                          rng=rng)  # fmt: skip

    def eds(self, state, shape=None, pixel_um=None, *, lines=tuple(EDS_LINES),
            live_time_s=300.0, beam_shift_um=(0.0, 0.0),
            rng=None) -> dict[str, np.ndarray]:  # fmt: skip
        """One count map per EDS line (uint16)."""
        shape = tuple(shape or self.geometry.eds_shape)
        pixel_um = pixel_um or self.geometry.eds_pixel_um
        origin = self.field_origin_um(state, shape, pixel_um, beam_shift_um)
        return eds_maps(self.face(state), state.true_depth_um, shape, pixel_um, origin,
                        lines=tuple(lines), live_time_s=live_time_s, state=state.face_state(),
                        rng=rng)  # fmt: skip

    def sims(self, state, shape=None, pixel_um=None, *, masses=("6Li+", "7Li+"),
             frame_time_s=300.0, current_na=SIMS_REFERENCE_CURRENT_NA,
             rng=None) -> dict[str, np.ndarray]:  # fmt: skip
        """One count map per mass (uint32; unknown masses are zero: no such ion here).

        Counts scale with the primary dose: the frame time and the ion current
        (``SIMS_COUNTS_PER_S`` is at ``SIMS_REFERENCE_CURRENT_NA``).
        """
        shape = tuple(shape or self.geometry.sims_shape)
        pixel_um = pixel_um or self.geometry.sims_pixel_um
        origin = self.field_origin_um(state, shape, pixel_um)
        dose = max(float(current_na), 0.0) / SIMS_REFERENCE_CURRENT_NA
        dwell_ms = 1e3 * float(frame_time_s) * dose / (shape[0] * shape[1])
        maps = sims_maps(self.face(state), state.true_depth_um, shape, pixel_um, origin,
                         dwell_ms=dwell_ms, state=state.face_state(), rng=rng)  # fmt: skip
        zero = np.zeros(shape, dtype=np.uint32)
        return {mass: maps.get(mass, zero) for mass in masses}

    def contains_fields(self) -> bool:
        """True when the block holds every nominal field (and the cap band)."""
        width, height = self.phantom.size_um[:2]
        g = self.geometry
        for shape, pixel in ((g.sem_shape, g.sem_pixel_um), (g.eds_shape, g.eds_pixel_um),
                             (g.sims_shape, g.sims_pixel_um)):  # fmt: skip
            y0, x0 = g.origin_um(shape, pixel)
            if y0 < 0 or x0 < 0 or y0 + shape[0] * pixel > height or x0 + shape[1] * pixel > width:
                return False
        return g.cap_y_um[0] >= 0
