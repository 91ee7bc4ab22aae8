"""A refused plan raises where it is called, and bluesky logs no traceback above it."""

import logging

import pytest
from bluesky import RunEngine
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from ophyd.sim import SoftPositioner, det

from multiscope.plans.preflight import PlanArgumentError
from multiscope.plans.refusals import QuietRefusals, checked_at_call
from multiscope.plans.scans import count_frames, line_scan


@pytest.fixture
def axis():
    return SoftPositioner(name="axis", limits=(-5, 5), init_pos=0)


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda axis: checked_at_call(line_scan)([det], axis, 0, 50, 5), "outside its limits"),
        (lambda axis: checked_at_call(line_scan)([det], axis, 0, 1, 0), "num must be >= 1"),
        (lambda axis: checked_at_call(count_frames)([object()], 1), "not readable"),
    ],
)
def test_a_checked_plan_refuses_at_the_call(axis, call, fragment):
    with pytest.raises(PlanArgumentError, match=fragment):
        call(axis)  # no RE(...): building the plan is enough
    assert axis.position == 0


def test_the_unchecked_plan_refuses_only_when_run(axis):
    plan = line_scan([det], axis, 0, 50, 5)  # what the README's tour used to claim raised
    with pytest.raises(PlanArgumentError):
        next(plan)


def test_a_checked_plan_runs_as_the_plan_itself(axis):
    documents = {True: [], False: []}
    for checked in (False, True):
        RE = RunEngine({})
        RE.subscribe(lambda name, doc, c=checked: documents[c].append((name, doc)))
        plan = checked_at_call(line_scan) if checked else line_scan
        axis.move(0)
        RE(plan([det], axis, -1, 1, 5))

    def summary(docs):
        return [(n, d["data"]) if n == "event" else n for n, d in docs]

    assert summary(documents[True]) == summary(documents[False])
    assert [n for n, _ in documents[True]].count("event") == 5
    assert checked_at_call(line_scan).__name__ == "line_scan"
    assert checked_at_call(line_scan).__doc__ == line_scan.__doc__


def test_replies_exceptions_and_return_values_reach_the_plan():
    log = []

    def plan():
        reply = yield "first"
        log.append(("reply", reply))
        try:
            yield "second"
        except KeyError as exc:
            log.append(("caught", exc.args[0]))
        yield "third"
        return "done"

    checked = checked_at_call(plan)()
    assert next(checked) == "first"
    assert checked.send(42) == "second"
    assert checked.throw(KeyError("pause")) == "third"
    with pytest.raises(StopIteration) as stop:
        next(checked)
    assert stop.value.value == "done"
    assert log == [("reply", 42), ("caught", "pause")]

    closed = []

    def closing_plan():
        try:
            yield "first"
            yield "second"
        finally:
            closed.append(True)

    checked = checked_at_call(closing_plan)()
    next(checked)
    checked.close()
    assert closed == [True]


def _run_aborted(caplog):
    return [r for r in caplog.records if r.getMessage() == "Run aborted"]


def test_a_refusal_before_the_run_logs_no_traceback(axis, caplog):
    RE = RunEngine({})
    QuietRefusals.install(RE)
    with caplog.at_level(logging.DEBUG, logger="bluesky"):
        with pytest.raises(PlanArgumentError, match="outside its limits"):
            RE(line_scan([det], axis, 0, 50, 5))
        assert _run_aborted(caplog) == []
        # Any other failure keeps bluesky's log...
        with pytest.raises(RuntimeError):
            RE(_fails_with(RuntimeError("broken")))
        assert len(_run_aborted(caplog)) == 1
        # ...and so does a refusal inside an open run.
        with pytest.raises(PlanArgumentError):
            RE(bpp.run_wrapper(_fails_with(PlanArgumentError("late"))))
        assert len(_run_aborted(caplog)) == 2


def test_without_the_filter_bluesky_logs_the_refusal(axis, caplog):
    RE = RunEngine({})  # the contrast: what a session without QuietRefusals showed
    with caplog.at_level(logging.DEBUG, logger="bluesky"), pytest.raises(PlanArgumentError):
        RE(line_scan([det], axis, 0, 50, 5))
    assert len(_run_aborted(caplog)) == 1


def _fails_with(exc):
    yield from bps.null()
    raise exc
