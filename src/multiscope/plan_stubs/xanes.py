"""XANES building blocks: edge table, energy grids, flat schedules, the verb of one energy.

The plans (:mod:`multiscope.plans.xanes`) compose these; the documents they make
are fixed by ``docs/decisions/0006-xanes-run-documents.md``. Everything here
checks its arguments and raises ``ValueError`` naming the parameter; the plans
turn that into ``PlanArgumentError`` before the first message.

Examples
--------
>>> grid = build_energy_grid("Ni")
>>> len(grid), grid.edge_keV, grid.energies_keV[0], grid.energies_keV[-1]
(63, 8.333, 8.283, 8.433)
>>> flat_indices(10, "interpolate", 4)
(0, 4, 8, 9)
"""

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from bluesky import plan_stubs as bps
from bluesky.utils import plan
from ophyd import Signal

from ..checks import estimate_moves_s, require_number
from .frames import take_flats, take_frames
from .txm import move_energy

__all__ = [
    "BLOCK_OVERHEAD_S",
    "EDGES_KEV",
    "ENERGY_INDEX_FIELD",
    "FILTERS",
    "XANES_FLAT_POLICIES",
    "EnergyGrid",
    "build_energy_grid",
    "check_energies",
    "edge_energy_keV",
    "estimate_energy_moves_s",
    "estimate_moves_s",
    "energy_index_signal",
    "flat_indices",
    "xanes_energy_point",
]

#: K-edge energies (keV) of the transition metals of battery cathodes (xraydb agrees).
EDGES_KEV: dict[str, float] = {
    "Ti": 4.966,
    "V": 5.465,
    "Cr": 5.989,
    "Mn": 6.539,
    "Fe": 7.112,
    "Co": 7.709,
    "Ni": 8.333,
    "Cu": 8.979,
    "Zn": 9.659,
}

#: Named attenuator settings upstream of the sample. The TXM has no filter device:
#: the plans validate the name against this table and record it (``filter``).
FILTERS: dict[str, str] = {
    "none": "no attenuator",
    "Al_25um": "25 um aluminium foil",
    "Al_50um": "50 um aluminium foil",
    "Al_100um": "100 um aluminium foil",
    "Al_200um": "200 um aluminium foil",
    "Si_500um": "500 um silicon wafer (harmonic rejection tests)",
}

#: When flats are taken (sample out, at the energy): every energy; every N-th
#: (0, N, 2N, ...); or every N-th plus the last, so every energy lies between two
#: flat sets and the analysis interpolates the flat linearly in energy.
XANES_FLAT_POLICIES = ("every", "every_n", "interpolate")

#: Data key of the soft signal holding the energy's index in the grid (decision 0006).
ENERGY_INDEX_FIELD = "xanes_energy_index"


def edge_energy_keV(edge: str) -> float:  # noqa: N802 - unit spelling
    """K-edge energy (keV) of element ``edge`` (``"Ni"``): the table, else xraydb."""
    if not isinstance(edge, str) or not edge.strip():
        raise ValueError(f"edge must be an element symbol such as 'Ni', got {edge!r}")
    symbol = edge.strip().capitalize()
    if symbol in EDGES_KEV:
        return EDGES_KEV[symbol]
    import xraydb  # only for edges outside the table

    try:
        return round(float(xraydb.xray_edge(symbol, "K").energy) / 1000.0, 4)
    except Exception:
        raise ValueError(
            f"unknown edge {edge!r}: use an element symbol (table: {sorted(EDGES_KEV)})"
        ) from None


@dataclass(frozen=True)
class EnergyGrid:
    """The energies of a XANES scan and the windows its analysis uses (all keV).

    Attributes
    ----------
    edge : str
        Element symbol of the absorption edge (K edge).
    edge_keV : float
        Edge energy.
    energies_keV : tuple of float
        Strictly increasing, in scan order.
    pre_edge_keV, post_edge_keV : tuple of float
        Normalisation windows ``(low, high)``, each holding >= 2 grid energies.
    whiteline_keV : tuple of float
        Where the whiteline peak is searched, holding >= 3 grid energies.
    """

    edge: str
    edge_keV: float
    energies_keV: tuple[float, ...]
    pre_edge_keV: tuple[float, float]
    post_edge_keV: tuple[float, float]
    whiteline_keV: tuple[float, float]

    def __post_init__(self):
        energies = np.asarray(self.energies_keV, dtype=float)
        if energies.ndim != 1 or energies.size < 2:
            raise ValueError("energies_keV must be a list of at least 2 energies")
        if not np.all(np.isfinite(energies)) or np.any(energies <= 0):
            raise ValueError("energies_keV must be positive and finite")
        steps = np.diff(energies)
        if np.any(steps <= 0):
            k = int(np.argmax(steps <= 0))
            raise ValueError(
                "energies_keV must be strictly increasing (scan order): "
                f"{energies[k]} then {energies[k + 1]} keV at indices {k}, {k + 1}"
            )
        for name, need in (("pre_edge_keV", 2), ("post_edge_keV", 2), ("whiteline_keV", 3)):
            low, high = (float(v) for v in getattr(self, name))
            inside = int(np.count_nonzero((energies >= low - 1e-9) & (energies <= high + 1e-9)))
            if not low < high or inside < need:
                raise ValueError(
                    f"{name} = [{low}, {high}] must be increasing and hold >= {need} grid "
                    f"energies (holds {inside})"
                )

    def __len__(self) -> int:
        return len(self.energies_keV)

    @property
    def energies(self) -> np.ndarray:
        """The energies as an array (keV)."""
        return np.asarray(self.energies_keV, dtype=float)

    def to_md(self) -> dict:
        """The grid part of the start document's ``xanes`` block (plain JSON)."""
        return {
            "edge": self.edge,
            "edge_keV": self.edge_keV,
            "energies_keV": [float(e) for e in self.energies_keV],
            "pre_edge_keV": [float(e) for e in self.pre_edge_keV],
            "post_edge_keV": [float(e) for e in self.post_edge_keV],
            "whiteline_keV": [float(e) for e in self.whiteline_keV],
        }


def _segment(start: float, stop: float, step: float, *, include_stop: bool) -> np.ndarray:
    # Integer counts, not float accumulation: 1 eV steps land on whole eV.
    span = (stop - start) / step
    count = math.floor(span + 1e-9) + 1 if include_stop else math.ceil(span - 1e-9)
    return start + step * np.arange(count)


def _window_ev(name: str, value) -> tuple[float, float]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (low, high) in eV from the edge, got {value!r}")
    return require_number(name, value[0]), require_number(name, value[1])


def build_energy_grid(
    edge: str,
    *,
    energies_keV: Sequence[float] | None = None,
    edge_keV: float | None = None,
    pre_start_eV: float = -50.0,
    fine_start_eV: float = -15.0,
    fine_stop_eV: float = 25.0,
    post_stop_eV: float = 100.0,
    pre_step_eV: float = 5.0,
    fine_step_eV: float = 1.0,
    post_step_eV: float = 5.0,
    pre_edge_eV: tuple[float, float] | None = None,
    post_edge_eV: tuple[float, float] | None = None,
    whiteline_eV: tuple[float, float] | None = None,
) -> EnergyGrid:
    """Energies across an absorption edge: coarse pre-edge, fine edge and whiteline, coarse post.

    Relative to the edge ``E0`` (eV): ``[pre_start, fine_start)`` every
    ``pre_step``, ``[fine_start, fine_stop)`` every ``fine_step``, ``[fine_stop,
    post_stop]`` every ``post_step``. The defaults give 63 energies across the Ni
    K-edge (8.283-8.433 keV). With ``energies_keV`` the list is used as given.

    Parameters
    ----------
    edge : str
        Element symbol (K edge), e.g. ``"Ni"``; see :data:`EDGES_KEV`.
    energies_keV : sequence of float, optional
        Explicit energies (strictly increasing); the region arguments are then
        used only for the default windows.
    edge_keV : float, optional
        Override the tabulated edge energy.
    pre_start_eV, fine_start_eV, fine_stop_eV, post_stop_eV : float
        Region boundaries (eV from the edge), increasing.
    pre_step_eV, fine_step_eV, post_step_eV : float
        Steps (eV), > 0.
    pre_edge_eV, post_edge_eV, whiteline_eV : tuple of float, optional
        Analysis windows (eV from the edge). Defaults: pre-edge from the first
        energy to ``fine_start``; post-edge from ``fine_stop + 15`` to the last
        energy; whiteline from the edge to ``fine_stop``.

    Returns
    -------
    EnergyGrid

    Raises
    ------
    ValueError
        Naming the argument: unknown edge, bad steps or regions, a non-increasing
        list, a window holding too few energies.
    """
    e0 = edge_energy_keV(edge) if edge_keV is None else require_number("edge_keV", edge_keV)
    if e0 <= 0:
        raise ValueError(f"edge_keV must be > 0, got {e0}")
    names = ("pre_start_eV", "fine_start_eV", "fine_stop_eV", "post_stop_eV")
    values = (pre_start_eV, fine_start_eV, fine_stop_eV, post_stop_eV)
    bounds = [require_number(name, value) for name, value in zip(names, values, strict=True)]
    steps = []
    for name, value in (
        ("pre_step_eV", pre_step_eV),
        ("fine_step_eV", fine_step_eV),
        ("post_step_eV", post_step_eV),
    ):
        steps.append(require_number(name, value))
        if steps[-1] <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    if energies_keV is None:
        if not bounds[0] < bounds[1] < bounds[2] < bounds[3]:
            raise ValueError(f"need {' < '.join(names)}, got {bounds}")
        relative = np.concatenate(
            [
                _segment(bounds[0], bounds[1], steps[0], include_stop=False),
                _segment(bounds[1], bounds[2], steps[1], include_stop=False),
                _segment(bounds[2], bounds[3], steps[2], include_stop=True),
            ]
        )
        energies = np.round(e0 + relative / 1000.0, 6)
    else:
        try:
            energies = np.asarray([require_number("energies_keV", e) for e in energies_keV], float)
        except TypeError:
            raise ValueError(
                f"energies_keV must be a list of numbers, got {energies_keV!r}"
            ) from None
    first, last = (float(energies[0]), float(energies[-1])) if energies.size else (e0, e0)

    def window(name, value, default_eV):
        low, high = default_eV if value is None else _window_ev(name, value)
        return (round(e0 + low / 1000.0, 6), round(e0 + high / 1000.0, 6))

    return EnergyGrid(
        edge=edge.strip().capitalize(),
        edge_keV=e0,
        energies_keV=tuple(float(e) for e in energies),
        pre_edge_keV=window("pre_edge_eV", pre_edge_eV, ((first - e0) * 1e3, bounds[1])),
        post_edge_keV=window("post_edge_eV", post_edge_eV, (bounds[2] + 15.0, (last - e0) * 1e3)),
        whiteline_keV=window("whiteline_eV", whiteline_eV, (0.0, bounds[2])),
    )


def flat_indices(num_energies: int, policy: str, flat_every: int | None = None) -> tuple[int, ...]:
    """Indices of the energies at which flats are taken, by :data:`XANES_FLAT_POLICIES`.

    Parameters
    ----------
    num_energies : int
        Energies in the grid.
    policy : {"every", "every_n", "interpolate"}
        See :data:`XANES_FLAT_POLICIES`.
    flat_every : int, optional
        N, required with ``"every_n"`` and ``"interpolate"`` (1 <= N <= num_energies);
        with ``"every"`` only 1 or None.
    """
    if policy not in XANES_FLAT_POLICIES:
        raise ValueError(f"flat_policy must be one of {XANES_FLAT_POLICIES}, got {policy!r}")
    if policy == "every":
        if flat_every not in (None, 1):
            raise ValueError('flat_every is only used with flat_policy="every_n" or "interpolate"')
        return tuple(range(num_energies))
    if isinstance(flat_every, bool) or not isinstance(flat_every, numbers.Integral):
        raise ValueError(f'flat_every (an integer) is required with flat_policy="{policy}"')
    if not 1 <= int(flat_every) <= num_energies:
        raise ValueError(f"flat_every must be in [1, {num_energies}], got {flat_every}")
    chosen = set(range(0, num_energies, int(flat_every)))
    if policy == "interpolate":
        chosen.add(num_energies - 1)
    return tuple(sorted(chosen))


def check_energies(energy, energies_keV: Sequence[float]) -> None:
    """Refuse energies outside the optics' range, the focus calibration or a real axis's limits.

    Parameters
    ----------
    energy : TXMEnergy
        The energy pseudo axis (``energy.limits``, ``focus_calibration``, ``check_value``).
    energies_keV : sequence of float
        Every energy a plan will visit.

    Raises
    ------
    ValueError
        Naming the energies and the range they break (``LimitError`` is one).
    """
    energies = [float(e) for e in energies_keV]
    low, high = energy.energy.limits
    if not low < high:
        raise ValueError(f"{energy.name} has no soft limits: the optics' energy range is unknown")
    outside = [e for e in energies if not low <= e <= high]
    if outside:
        raise ValueError(
            f"energies {outside[:5]} keV outside the optics' range [{low}, {high}] keV "
            f"({energy.name} limits); nothing was moved"
        )
    calibration = energy.focus_calibration()
    uncovered = [e for e in energies if not calibration.covers_energy(e)]
    if uncovered:
        raise ValueError(
            f"energies {uncovered[:5]} keV not covered by the focus calibration "
            f"{list(calibration.covers)} keV: calibrate over the grid's range (focus_calibration) "
            "or clear the calibration; nothing was moved"
        )
    for e in energies:
        energy.check_value(e)  # every real axis's limits, naming the axis


#: Seconds to stage and unstage the camera around one block of frames (a new HDF5 file)
#: over CA: 0.15-0.2 s measured on the simulated TXM; the plans' estimates add it per block.
BLOCK_OVERHEAD_S = 0.17


def estimate_energy_moves_s(energy, energies_keV: Sequence[float]) -> float:
    """Seconds of the energy moves in order, each as long as its slowest real axis (estimate)."""
    try:
        reals = energy.real_positioners
        current = [float(real.position) for real in reals]
        total = 0.0
        for e in energies_keV:
            targets = [float(t) for t in energy.forward(e)]
            total += max(
                estimate_moves_s(real, [t], start=c)
                for real, t, c in zip(reals, targets, current, strict=True)
            )
            current = targets
        return total
    except Exception:  # an estimate (fakes, a disconnected velocity) never stops a valid plan
        return 0.0


def energy_index_signal() -> Signal:
    """A new soft signal ``xanes_energy_index`` (int) for one plan's run."""
    return Signal(name=ENERGY_INDEX_FIELD, value=0)


@plan
def xanes_energy_point(
    camera,
    energy,
    sample_x,
    index_signal,
    index: int,
    energy_keV: float,
    *,
    num_frames: int,
    num_flats: int = 0,
    x_in: float | None = None,
    x_out: float | None = None,
):
    """One energy of a 2D XANES scan: move there in focus, flats if asked, sample frames.

    Sets ``index_signal`` to ``index`` first, so every frame at this energy carries
    it; the energy readback and the index are read with every flat and sample
    frame (streams ``flat`` and ``primary``).

    Parameters
    ----------
    camera : StreamingCamera
        The area detector.
    energy : TXMEnergy
        Energy pseudo axis (mono, zone plate and detector, in focus).
    sample_x : Movable
        Moves the sample out for flats.
    index_signal : Signal
        The run's ``xanes_energy_index``.
    index : int
        Index of ``energy_keV`` in the grid.
    energy_keV : float
        Target energy.
    num_frames : int
        Sample frames (>= 1).
    num_flats : int
        Flat frames at this energy (0: none).
    x_in, x_out : float, optional
        ``sample_x`` in and out of the beam, required when ``num_flats`` > 0.
    """
    if num_flats and (x_in is None or x_out is None):
        raise ValueError("x_in and x_out are required when flats are taken")
    readers = [energy, index_signal]
    yield from bps.checkpoint()
    yield from bps.mv(index_signal, int(index))
    yield from move_energy(energy, energy_keV)
    if num_flats:
        yield from take_flats(camera, sample_x, x_out, x_in, num_flats, also_read=readers)
    yield from take_frames(camera, num_frames, "primary", also_read=readers)
