"""Wait for a condition instead of sleeping a fixed time before an assertion.

A fixed sleep is either too short on a loaded machine (the test flakes) or longer
than needed everywhere else. :func:`wait_until` polls the condition and returns as
soon as it holds; its timeout is a limit for a condition that never comes, never
the synchronisation itself. Importable from every test directory (``tests/conftest.py``
puts ``tests/`` on ``sys.path``): ``from waiting import wait_until``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["ConditionNotMetError", "wait_until"]

T = TypeVar("T")


class ConditionNotMetError(AssertionError):
    """The condition did not hold within the timeout (a test failure, not an error)."""


def wait_until(
    condition: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.01,
    message: str | Callable[[], str] = "",
) -> T:
    """Poll ``condition()`` until it returns a truthy value; return that value.

    Parameters
    ----------
    condition : callable
        Called with no argument; a truthy return ends the wait.
    timeout : float, optional
        Seconds after which the wait fails: a limit for a condition that never comes,
        generous enough for a loaded machine, never what the test waits for.
    interval : float, optional
        Seconds between two polls.
    message : str or callable, optional
        What did not happen, for the failure; a callable is evaluated at the failure
        (to show the state at that moment).

    Returns
    -------
    object
        The first truthy value ``condition()`` returned.

    Raises
    ------
    ConditionNotMetError
        If the condition did not hold within ``timeout`` (it is polled once more at
        the deadline, so a slow poll does not cost the last chance).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            value = condition()
            if value:
                return value
            text = message() if callable(message) else message
            name = getattr(condition, "__name__", repr(condition))
            raise ConditionNotMetError(f"{text or name} (not within {timeout:g} s)")
        time.sleep(interval)
