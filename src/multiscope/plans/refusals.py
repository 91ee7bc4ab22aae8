"""A refused plan says so once, where it is called.

A plan is a generator: ``line_scan([cam], m1, 0, 50, 5)`` only builds it, and its
argument checks (:mod:`multiscope.plans.preflight`, all made before the first
message) ran only inside ``RE(...)``, where bluesky also logged a "Run aborted"
traceback above the clear message. Two pieces, installed by the session:

:func:`checked_at_call`
    wraps a plan so that calling it runs the plan up to its first message: a bad
    argument raises :class:`~multiscope.plans.preflight.PlanArgumentError` at the
    call, and the plan handed to the RunEngine goes on from that first message.
:class:`QuietRefusals`
    drops bluesky's "Run aborted" traceback record for a ``PlanArgumentError`` raised
    before the plan opened a run (the exception itself still reaches the caller); a
    refusal after a run opened keeps its log.
"""

import functools
import logging
from collections.abc import Callable, Generator
from typing import Any

from .preflight import PlanArgumentError

__all__ = ["QuietRefusals", "checked_at_call"]


def _continue_from(plan: Generator, first: Any) -> Generator:
    """Yield ``first`` (the plan's first message, already taken), then the rest of ``plan``.

    ``yield from`` for a generator that has already run to its first ``yield``:
    replies and exceptions the RunEngine sends go on to the plan.
    """
    message = first
    while True:
        try:
            reply = yield message
        except GeneratorExit:
            plan.close()
            raise
        except BaseException as exc:  # the RunEngine throws into the plan (pause, abort)
            try:
                message = plan.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                message = plan.send(reply)
            except StopIteration as stop:
                return stop.value


def checked_at_call(plan_function: Callable[..., Generator]) -> Callable[..., Generator]:
    """Make ``plan_function(...)`` check its arguments when called, not when run.

    The plan runs to its first message at the call (its checks all come before it,
    decision 0001's plans and :mod:`multiscope.plans.preflight`), so a refusal is a
    :class:`PlanArgumentError` there; the returned generator yields that message
    first and the rest of the plan after it.

    Parameters
    ----------
    plan_function : callable
        A generator function (a plan).

    Returns
    -------
    callable
        Same name, docstring and signature.
    """

    @functools.wraps(plan_function)
    def checked(*args, **kwargs):
        __tracebackhide__ = True  # IPython: the refusal shows the plan's frames, not this one
        plan = plan_function(*args, **kwargs)
        try:
            first = next(plan)
        except StopIteration as stop:  # a plan of no message at all
            return _empty(stop.value)
        return _continue_from(plan, first)

    checked.checked_at_call = True
    # bluesky's mark of a plan that is not a generator function itself
    # (bluesky.utils.is_plan): the queueserver lists a namespace's plans with it.
    checked._is_plan_ = True
    return checked


def _empty(value: Any) -> Generator:
    return value
    yield  # a generator that yields nothing and returns value


class QuietRefusals(logging.Filter):
    """Drop bluesky's "Run aborted" traceback for a refusal made before any run opened.

    It follows the RunEngine's start documents and its state (a plan begins when the
    RunEngine goes from idle to running) and filters the RunEngine's logger;
    :meth:`install` sets up all three.
    """

    def __init__(self, RE) -> None:  # noqa: N803 - the name every bluesky user knows
        super().__init__()
        self._RE = RE
        self._run_opened = False  # by the plan now running

    @classmethod
    def install(cls, RE) -> "QuietRefusals":  # noqa: N803
        """Create one for ``RE``: subscribed, on its state hook and on its logger."""
        refusals = cls(RE)
        RE.subscribe(refusals)
        chained = RE.state_hook

        def state_hook(new_state, old_state):
            if (str(old_state), str(new_state)) == ("idle", "running"):
                refusals._run_opened = False
            if chained is not None:
                chained(new_state, old_state)

        RE.state_hook = state_hook
        RE.log.logger.addFilter(refusals)
        return refusals

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            self._run_opened = True

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        if getattr(record, "RE", None) is not self._RE or not record.exc_info:
            return True
        refused = isinstance(record.exc_info[1], PlanArgumentError)
        return not (refused and not self._run_opened and record.getMessage() == "Run aborted")
