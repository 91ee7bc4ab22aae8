"""One sample's history across instruments, from the runs' start documents.

Every plan of every instrument takes ``sample_id`` and records it in its start
document (:func:`multiscope.plans.preflight.sample_md`); derived runs (a
reconstruction, a stitched volume) carry their raw run's. A sample is *registered*
by the run that makes it known, once that run has succeeded:
:func:`multiscope.plans.samples.register_sample` for a sample brought in (a coin
cell, an electrode sheet), or the laser mill's cut that makes a tab or pillar out
of a sheet. Such a run's start document holds a
``sample`` block: its id, material, the sample it was cut from and a description.

The registry is therefore the catalog itself: nothing is kept beside it, so a
facility's shared tiled server holds it as it holds the runs, and a run recovered
from the journal after a crash is in the history like any other (decision 0019).

:func:`history_from_metadata` orders the runs of one sample by start time and says
in one line what each did; :meth:`multiscope.catalog.Catalog.sample_history` and
``multiscope catalog history SAMPLE`` use it.

Only the standard library is imported, so any layer may use it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

__all__ = [
    "SampleHistory",
    "SampleRecord",
    "SampleStep",
    "history_from_metadata",
    "record_from_start",
    "samples_from_metadata",
]

# What a plan does to a sample, for the one-line account of each run.
_VERBS = {
    "register_sample": "registered",
    "cut_tab": "cut (tab)",
    "lathe_pillar": "cut (pillar)",
    "xrm_tomo_scan": "surveyed (XRM tomogram)",
    "scout_and_zoom": "surveyed and zoomed (XRM)",
    "tomo_scan": "imaged (tomogram)",
    "fly_tomo_scan": "imaged (fly tomogram)",
    "mosaic_radiograph": "imaged (radiograph mosaic)",
    "xanes_2d": "imaged (2D XANES)",
    "xanes_3d": "imaged (3D XANES)",
    "focus_calibration": "focus calibrated",
    "slice_and_view": "sectioned (slice and view)",
    "kintsugi_face": "Pt-filled face (kintsugi)",
}


@dataclass(frozen=True)
class SampleRecord:
    """What the run registering a sample says about it."""

    sample_id: str
    material: str = ""
    parent_id: str = ""
    description: str = ""
    registered_by: str = ""  # uid of the registering run
    time: float | None = None


@dataclass(frozen=True)
class SampleStep:
    """One run of a sample's history."""

    uid: str
    time: float | None
    instrument: str
    plan_name: str
    exit_status: str | None
    what: str
    derived_from: str | None = None

    def __str__(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time)) if self.time else "?"
        return (
            f"{when}  {self.uid[:8]}  {self.instrument or '?':<8} {self.plan_name:<24} "
            f"{self.exit_status or 'running?':<8} {self.what}"
        )


@dataclass(frozen=True)
class SampleHistory:
    """Everything recorded about one sample, oldest first.

    Iterating gives the :class:`SampleStep` objects; ``str()`` a table.
    """

    HEADER: ClassVar[str] = (
        f"{'started':<19}  {'uid':<8}  {'instr.':<8} {'plan':<24} {'status':<8} what"
    )

    sample_id: str
    record: SampleRecord | None
    steps: tuple[SampleStep, ...] = field(default_factory=tuple)

    def __iter__(self) -> Iterator[SampleStep]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, index: int) -> SampleStep:
        return self.steps[index]

    @property
    def plan_names(self) -> list[str]:
        """The plans run on the sample, in order."""
        return [step.plan_name for step in self.steps]

    @property
    def instruments(self) -> list[str]:
        """The instruments that handled the sample, in order of first use."""
        return list(dict.fromkeys(step.instrument for step in self.steps if step.instrument))

    def __str__(self) -> str:
        if self.record is None:
            head = f"sample {self.sample_id!r} (never registered)"
        else:
            r = self.record
            parts = [p for p in (r.material, r.parent_id and f"from {r.parent_id}") if p]
            head = f"sample {self.sample_id!r}" + (f" ({', '.join(parts)})" if parts else "")
            if r.description:
                head += f": {r.description}"
        if not self.steps:
            return f"{head}\nno runs recorded"
        return "\n".join([head, self.HEADER, *map(str, self.steps)])


def record_from_start(
    uid: str, start: dict[str, Any], stop: dict[str, Any] | None = None
) -> SampleRecord | None:
    """The :class:`SampleRecord` a run registers, if it registers one.

    Only a run that succeeded registers its sample: a cut refused, stopped or failed
    made no piece. Without ``stop`` (a run still open) nothing is registered yet.
    """
    if (stop or {}).get("exit_status") != "success":
        return None
    block = start.get("sample")
    if not isinstance(block, dict) or not block.get("id"):
        return None
    return SampleRecord(
        sample_id=str(block["id"]),
        material=str(block.get("material") or ""),
        parent_id=str(block.get("parent_id") or ""),
        description=str(block.get("description") or ""),
        registered_by=uid,
        time=start.get("time"),
    )


def _what(start: dict[str, Any], stop: dict[str, Any]) -> str:
    plan = start.get("plan_name") or "?"
    verb = _VERBS.get(plan, plan)
    if plan == "xrm_tomo_scan" and start.get("scout"):  # the zoom of a scout and zoom
        verb = f"zoomed (XRM tomogram of the VOI from {str(start['scout'].get('survey_uid'))[:8]})"
    elif isinstance(start.get("xrm"), dict) and start["xrm"].get("recipe"):
        verb = f"{verb}, recipe {start['xrm']['recipe']}"
    if start.get("derived_from"):
        verb = f"derived from {str(start['derived_from'])[:8]}: {verb}"
    events = stop.get("num_events") or {}
    counted = ", ".join(f"{n} {stream}" for stream, n in events.items() if n)
    return f"{verb}; {counted}" if counted else verb


def history_from_metadata(
    sample_id: str, runs: Iterable[tuple[str, dict[str, Any]]]
) -> SampleHistory:
    """The history of ``sample_id`` from ``(uid, metadata)`` of its runs.

    Parameters
    ----------
    sample_id : str
    runs : iterable of (str, dict)
        Runs whose start document names the sample; ``metadata`` holds ``start``
        and (once the run ended) ``stop``, as tiled stores a bluesky run.

    Returns
    -------
    SampleHistory
        Steps ordered by start time; the record from the earliest registering run.
    """
    steps, record = [], None
    for uid, metadata in runs:
        start, stop = metadata.get("start") or {}, metadata.get("stop") or {}
        found = record_from_start(uid, start, stop)
        earliest = record is None or (found is not None and (found.time or 0) < (record.time or 0))
        if found is not None and found.sample_id == sample_id and earliest:
            record = found
        steps.append(
            SampleStep(
                uid=uid,
                time=start.get("time"),
                instrument=str(start.get("instrument") or ""),
                plan_name=str(start.get("plan_name") or "?"),
                exit_status=stop.get("exit_status"),
                what=_what(start, stop),
                derived_from=start.get("derived_from"),
            )
        )
    # A derived run (made by a live callback, outside the session's RunEngine) is on
    # the instrument of the run it was derived from.
    instrument_of = {step.uid: step.instrument for step in steps}
    steps = [
        replace(step, instrument=instrument_of.get(step.derived_from or "", ""))
        if not step.instrument and step.derived_from
        else step
        for step in steps
    ]
    steps.sort(key=lambda step: (step.time is None, step.time or 0.0))
    return SampleHistory(sample_id, record, tuple(steps))


def samples_from_metadata(runs: Iterable[tuple[str, dict[str, Any]]]) -> list[SampleRecord]:
    """The samples registered by ``(uid, metadata)`` runs, in order of registration.

    A sample registered twice keeps its first record; a run that did not succeed
    registers nothing.
    """
    records = [record_from_start(uid, md.get("start") or {}, md.get("stop")) for uid, md in runs]
    first: dict[str, SampleRecord] = {}
    for record in sorted(filter(None, records), key=lambda r: r.time or 0.0):
        first.setdefault(record.sample_id, record)
    return list(first.values())
