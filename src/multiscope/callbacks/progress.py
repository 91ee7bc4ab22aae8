"""A progress bar per run, driven by documents.

bluesky's ``ProgressBarManager`` shows individual moves; this shows the run:
points done out of ``num_points`` with the plan's own duration estimate.
"""

from __future__ import annotations

import sys

from event_model import DocumentRouter
from tqdm.auto import tqdm

__all__ = ["RunProgress"]


class RunProgress(DocumentRouter):
    """Show one progress bar per run for the events of one stream.

    Parameters
    ----------
    stream : str
        The stream whose events count as progress (``"primary"``).
    file : file-like
        Where the bar is drawn (stderr by default, so tables on stdout stay clean).
    """

    def __init__(self, stream: str = "primary", file=None):
        super().__init__()
        self._stream = stream
        self._file = file or sys.stderr
        self._bar = None
        self._descriptors: set[str] = set()

    def start(self, doc):
        # A run may name the stream that counts its points (slice_and_view: "sem").
        self._active = doc.get("progress_stream", self._stream)
        total = doc.get("num_points")
        label = f"{doc.get('plan_name', 'run')} #{doc.get('scan_id', '?')}"
        self._descriptors.clear()
        self._bar = tqdm(total=total, desc=label, unit="pt", file=self._file, leave=True)

    def descriptor(self, doc):
        if doc.get("name") == getattr(self, "_active", self._stream):
            self._descriptors.add(doc["uid"])

    def event(self, doc):
        if self._bar is not None and doc["descriptor"] in self._descriptors:
            self._bar.update(1)

    def event_page(self, doc):
        if self._bar is not None and doc["descriptor"] in self._descriptors:
            self._bar.update(len(doc["seq_num"]))

    def stop(self, doc):
        if self._bar is not None:
            self._bar.set_postfix_str(doc.get("exit_status", ""))
            self._bar.close()
            self._bar = None
