"""Run a document callback on a worker thread, so heavy analysis never blocks the RunEngine.

:class:`BackgroundCallback` wraps any ``callback(name, doc)`` (typically an
:class:`event_model.DocumentRouter` such as
:class:`~multiscope.callbacks.tomo.TomoReconstructor`). The RunEngine thread only
puts the document on a bounded queue; one daemon thread feeds the wrapped
callback in order. Exceptions are logged and kept in :attr:`~BackgroundCallback.errors`,
never raised into the RunEngine.

>>> bg = BackgroundCallback(TomoReconstructor(output_dir, publish=writer))  # doctest: +SKIP
>>> RE.subscribe(bg)                                                         # doctest: +SKIP
>>> bg.drain(timeout=60)  # e.g. in a test, before looking at the results  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BackgroundCallback", "CallbackError"]

logger = logging.getLogger(__name__)

_STOP = object()


@dataclass
class CallbackError:
    """One exception raised by the wrapped callback.

    Attributes
    ----------
    name : str
        Name of the document being processed.
    uid : str or None
        Its uid (None for documents without one).
    exception : BaseException
        The exception.
    traceback : str
        The formatted traceback.
    """

    name: str
    uid: str | None
    exception: BaseException
    traceback: str


class BackgroundCallback:
    """Feed a document callback from a worker thread; the caller only enqueues.

    Parameters
    ----------
    callback : callable
        ``callback(name, doc)``; called on the worker thread only, in document order.
    maxsize : int, optional
        Queue capacity in documents. When it is full the current run is dropped
        (its remaining documents are discarded up to its stop, counted in
        :attr:`dropped`) rather than blocking the caller.
    name : str, optional
        Name of the worker thread (for logs).
    max_errors : int, optional
        How many errors :attr:`errors` keeps (the oldest are discarded).

    Attributes
    ----------
    errors : list of CallbackError
        Exceptions raised by the callback, oldest first.
    dropped : int
        Documents discarded because the queue was full.
    """

    def __init__(
        self,
        callback: Callable[[str, dict], object],
        maxsize: int = 100_000,
        *,
        name: str | None = None,
        max_errors: int = 100,
    ) -> None:
        self.callback = callback
        self.errors: list[CallbackError] = []
        self.dropped = 0
        self.max_errors = max_errors
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        # Documents put but not yet fully processed (queue.join has no timeout).
        self._pending = 0
        self._idle = threading.Condition()
        self._dropping = False
        self._closed = False
        self._thread = threading.Thread(
            target=self._work,
            name=name or f"background-{type(callback).__name__}",
            daemon=True,
        )
        self._thread.start()

    def __call__(self, name: str, doc: dict) -> None:
        """Enqueue one document; never blocks and never raises."""
        if self._closed:
            logger.warning("%s: closed; %s document ignored", self._thread.name, name)
            return
        if self._dropping:
            # A partial run would give wrong results downstream: skip the rest of it.
            if name == "start":
                self._dropping = False
            else:
                self.dropped += 1
                if name == "stop":
                    self._dropping = False
                return
        with self._idle:
            self._pending += 1
        try:
            self._queue.put_nowait((name, doc))
        except queue.Full:
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()
            self.dropped += 1
            self._dropping = name != "stop"
            logger.error(
                "%s: queue full (%d documents); dropping the rest of the current run",
                self._thread.name,
                self._queue.maxsize,
            )

    @property
    def pending(self) -> int:
        """Documents queued or being processed."""
        with self._idle:
            return self._pending

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued document has been processed.

        Returns
        -------
        bool
            True if the queue emptied within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Process what is queued, then stop the worker. Idempotent.

        Returns
        -------
        bool
            True if the worker finished within ``timeout`` seconds.
        """
        if not self._closed:
            self._closed = True
            drained = self.drain(timeout)
            if not drained:
                logger.warning(
                    "%s: closing with %d documents left", self._thread.name, self.pending
                )
            # The sentinel must not be refused by a full queue; the worker is draining it.
            try:
                self._queue.put((_STOP, None), timeout=timeout)
            except queue.Full:
                return False
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _work(self) -> None:
        while True:
            name, doc = self._queue.get()
            if name is _STOP:
                return
            try:
                self.callback(name, doc)
            except Exception as exc:  # noqa: BLE001 - kept and logged, never raised into the RE
                logger.exception("%s: %s document failed", self._thread.name, name)
                uid = doc.get("uid") if isinstance(doc, dict) else None
                self.errors.append(CallbackError(name, uid, exc, traceback.format_exc()))
                del self.errors[: -self.max_errors]
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()
