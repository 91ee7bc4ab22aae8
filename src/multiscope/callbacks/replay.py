"""Pass each document of a run once: drop what a RunEngine rewind emits again.

A pause or a suspension rewinds a plan to its last checkpoint and replays the
messages since. A point whose event was saved before the interruption, with no
checkpoint after it, is then emitted a second time with the same ``seq_num``
(bluesky resets the stream's counter to the checkpoint's), with its StreamDatum
(the camera reports the same frame: :mod:`multiscope.devices.areadetector`).
Stored twice, a repeated event is a duplicate row and a repeated StreamDatum a
frame counted twice: the catalog would no longer read the stream.

:class:`ReplayFilter` sits between the RunEngine and one consumer and passes
every document of a run once: an event (or an event page's row) whose
``seq_num`` its stream already had, a StreamDatum whose ``seq_nums`` its stream
already had, and a StreamResource already passed are dropped. The first copy
stands: the camera reports the same frame for a replayed point, so the repeat
carries the same data. Memory is a few integers per stream.

Examples
--------
>>> RE.subscribe(ReplayFilter(catalog_writer))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["ReplayFilter"]

logger = logging.getLogger(__name__)


class _RunState:
    """What one run has passed: the last seq_num per descriptor, and its resources."""

    def __init__(self):
        self.last_event: dict[str, int] = {}  # descriptor uid -> highest seq_num passed
        # (descriptor uid, resource uid) -> highest seq_num with a datum
        self.last_datum: dict[tuple[str, str], int] = {}
        self.resources: set[str] = set()
        self.dropped = 0


class ReplayFilter:
    """A document callback that forwards each document once to ``callback``.

    Parameters
    ----------
    callback : callable
        ``callback(name, doc)``, e.g. the catalog writer or a live analysis.
    """

    def __init__(self, callback: Callable[[str, dict], object]):
        self.callback = callback
        self._runs: dict[str, _RunState] = {}  # run start uid -> state
        self._run_of_descriptor: dict[str, str] = {}

    def __call__(self, name: str, doc: dict):
        """Forward ``doc`` unless it repeats one already forwarded."""
        doc = self._filtered(name, doc)
        if doc is None:
            return None
        return self.callback(name, doc)

    def _filtered(self, name: str, doc: dict) -> dict | None:
        if name == "start":
            self._runs[doc["uid"]] = _RunState()
            return doc
        if name == "descriptor":
            self._run_of_descriptor[doc["uid"]] = doc["run_start"]
            return doc
        if name == "stop":
            state = self._runs.pop(doc["run_start"], None)
            self._run_of_descriptor = {
                d: r for d, r in self._run_of_descriptor.items() if r != doc["run_start"]
            }
            if state is not None and state.dropped:
                logger.info(
                    "run %s: %d documents repeated by rewinds were dropped",
                    doc["run_start"][:8],
                    state.dropped,
                )
            return doc
        if name == "event":
            return self._new_seq(doc["descriptor"], doc["seq_num"], doc, "last_event")
        if name == "event_page":
            return self._event_page(doc)
        if name == "stream_datum":
            # Per resource too: a flyer's collect sends one datum per data key, same seq_nums.
            key = (doc["descriptor"], doc["stream_resource"])
            return self._new_seq(key, doc["seq_nums"]["start"], doc, "last_datum")
        if name == "stream_resource":
            state = self._runs.get(doc.get("run_start", ""))
            if state is None:  # no run_start: resource uids are unique across runs
                state = next(reversed(self._runs.values()), None) if self._runs else None
            if state is None:
                return doc
            if doc["uid"] in state.resources:
                state.dropped += 1
                return None
            state.resources.add(doc["uid"])
            return doc
        return doc

    def _state_of(self, descriptor: str) -> _RunState | None:
        run = self._run_of_descriptor.get(descriptor)
        return None if run is None else self._runs.get(run)

    def _new_seq(self, key, seq_num: int, doc: dict, table: str) -> dict | None:
        """Pass ``doc`` if ``seq_num`` is past the last one passed under ``key``."""
        state = self._state_of(doc["descriptor"])
        if state is None:
            return doc
        last = getattr(state, table)
        if seq_num <= last.get(key, 0):
            state.dropped += 1
            return None
        if table == "last_datum":
            seq_num = doc["seq_nums"]["stop"] - 1
        last[key] = seq_num
        return doc

    def _event_page(self, page: dict) -> dict | None:
        state = self._state_of(page["descriptor"])
        if state is None:
            return page
        last = state.last_event.get(page["descriptor"], 0)
        keep = [i for i, seq in enumerate(page["seq_num"]) if seq > last]
        if not keep:
            state.dropped += len(page["seq_num"])
            return None
        state.last_event[page["descriptor"]] = page["seq_num"][keep[-1]]
        if len(keep) == len(page["seq_num"]):
            return page
        state.dropped += len(page["seq_num"]) - len(keep)

        def rows(column: dict) -> dict:
            return {key: [values[i] for i in keep] for key, values in column.items()}

        return {
            **page,
            "seq_num": [page["seq_num"][i] for i in keep],
            "time": [page["time"][i] for i in keep],
            "uid": [page["uid"][i] for i in keep],
            "data": rows(page["data"]),
            "timestamps": rows(page["timestamps"]),
            "filled": rows(page.get("filled", {})),
        }
