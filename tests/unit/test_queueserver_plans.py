"""Every instrument's plans pass the queueserver's own description and validation code.

The RE Manager lists the plans of its worker's namespace and validates each queued
item against their descriptions with pydantic (``bluesky_queueserver.manager.profile_ops``).
These tests run those functions over the names a session puts in its namespace
(:func:`multiscope.session.instrument_plans`), without servers: a plan the queueserver
cannot see, or whose annotations pydantic cannot resolve (``from __future__ import
annotations``, names imported under ``TYPE_CHECKING``), fails here in seconds.
"""

import inspect
from pathlib import Path

import pydantic
import pytest
from bluesky_queueserver.manager import profile_ops
from ophyd.sim import SynAxis, SynGauss

import multiscope
from multiscope.queueserver import USER_GROUP_PERMISSIONS, close_with_environment
from multiscope.queueserver.annotations import annotate_project_types
from multiscope.queueserver.destructive import require_cut_numbers
from multiscope.session import INSTRUMENTS, instrument_plans


def _namespace(instrument: str) -> dict:
    """The instrument's plans beside two simulated devices named like the demo's.

    Annotated as the worker's startup does (``configure_from_environment``).
    """
    m1 = SynAxis(name="m1")
    m1.limits = (-5.0, 5.0)
    cam = SynGauss("cam", m1, "m1", center=0.0, Imax=1.0)
    namespace = {**instrument_plans(instrument), "m1": m1, "cam": cam}
    require_cut_numbers(namespace)
    annotate_project_types(namespace)
    return namespace


def _descriptions(namespace: dict) -> tuple[dict, dict]:
    # ignore_invalid_plans=False: as the RE Manager's default, an undescribable plan raises.
    plans, devices, _, _ = profile_ops.existing_plans_and_devices_from_nspace(
        nspace=namespace, ignore_invalid_plans=False
    )
    return plans, devices


@pytest.mark.parametrize("instrument", sorted(INSTRUMENTS))
def test_the_queueserver_lists_every_plan_of_the_session(instrument):
    namespace = _namespace(instrument)
    plans, _ = _descriptions(namespace)
    generators = {
        name for name, obj in namespace.items() if inspect.isgeneratorfunction(inspect.unwrap(obj))
    }
    assert generators, f"{instrument} has no plans"
    assert generators <= set(plans), f"not seen as plans: {sorted(generators - set(plans))}"


@pytest.mark.parametrize("instrument", sorted(INSTRUMENTS))
def test_pydantic_resolves_every_parameter_of_every_plan(instrument):
    plans, _ = _descriptions(_namespace(instrument))
    unresolved = []
    for name, description in plans.items():
        parameters = profile_ops.construct_parameters(description["parameters"])
        model = profile_ops.pydantic_construct_model_class(parameters)
        if not model.__pydantic_complete__:
            unresolved.append(name)
        for parameter in parameters:
            # A string annotation is a forward reference pydantic resolves nowhere.
            if isinstance(parameter.annotation, str):
                unresolved.append(f"{name}({parameter.name}: {parameter.annotation!r})")
    assert not unresolved, f"annotations pydantic cannot resolve: {unresolved}"


def test_a_good_plan_validates_and_a_wrong_type_is_refused():
    plans, devices = _descriptions(_namespace("demo"))
    good = {"name": "line_scan", "args": [["cam"], "m1", -1.0, 1.0, 5]}
    ok, message = profile_ops.validate_plan(good, allowed_plans=plans, allowed_devices=devices)
    assert ok, message
    bad = {"name": "line_scan", "args": [["cam"], "m1", -1.0, 1.0, "five"]}
    ok, message = profile_ops.validate_plan(bad, allowed_plans=plans, allowed_devices=devices)
    assert not ok
    assert "num" in message and "integer" in message, message


def test_pydantic_is_the_validator_used():
    # The checks above build models with the pydantic the RE Manager imports.
    assert profile_ops.pydantic is pydantic


def test_the_shipped_permissions_allow_the_sessions_names_and_nothing_private():
    namespace = _namespace("demo")
    namespace["_private_scan"] = namespace["line_scan"]
    namespace["_m2"] = SynAxis(name="_m2")
    plans, devices = _descriptions(namespace)
    permissions = profile_ops.load_user_group_permissions(USER_GROUP_PERMISSIONS)
    allowed_plans, allowed_devices = profile_ops.load_allowed_plans_and_devices(
        existing_plans=plans, existing_devices=devices, user_group_permissions=permissions
    )
    assert set(allowed_plans["primary"]) == set(plans) - {"_private_scan"}
    assert "_private_scan" in plans and "_m2" in devices  # they exist, and are refused
    assert set(allowed_devices["primary"]) == {"m1", "cam"}
    assert not profile_ops.check_if_function_allowed(
        "line_scan", group_name="primary", user_group_permissions=permissions
    )


def test_no_postponed_annotations_under_plans_and_plan_stubs():
    # Under `from __future__ import annotations` every annotation is a string the
    # queueserver hands to pydantic unresolved; plan stubs end up in plans' signatures.
    root = Path(multiscope.__file__).parent
    offenders = [
        str(path.relative_to(root))
        for layer in ("plans", "plan_stubs")
        for path in sorted((root / layer).glob("*.py"))
        if "from __future__ import annotations" in path.read_text()
    ]
    assert not offenders


@pytest.mark.parametrize("instrument", sorted(INSTRUMENTS))
def test_every_annotated_parameter_keeps_an_annotation_the_manager_validates(instrument):
    # The manager drops an annotation it cannot rebuild (our dataclasses): no validation.
    namespace = _namespace(instrument)
    plans, _ = _descriptions(namespace)
    dropped = []
    for name, description in plans.items():
        signature = inspect.signature(namespace[name])
        for parameter in description["parameters"]:
            annotated = signature.parameters[parameter["name"]].annotation
            if annotated is not inspect.Parameter.empty and "annotation" not in parameter:
                dropped.append(f"{name}({parameter['name']}: {annotated})")
    assert not dropped, f"annotations the manager drops: {dropped}"


@pytest.mark.parametrize("plan_name", ["cut_tab", "lathe_pillar"])
def test_a_queued_cut_must_name_its_cut_number(plan_name):
    # The manager re-queues an aborted item as it was added: with "the next number" it
    # would cut again; with its number the mill refuses the repeat (decision 0031).
    namespace = _namespace("laser")
    item = {"name": plan_name, "args": ["laser", 100.0]}
    ok, message = _validate(namespace, item)
    assert not ok
    assert "cut_number" in message, message
    ok, message = _validate(namespace, {**item, "kwargs": {"cut_number": 3}})
    assert ok, message
    ok, message = _validate(namespace, {**item, "kwargs": {"cut_number": "third"}})
    assert not ok and "cut_number" in message, message


def test_required_cut_numbers_leave_the_plan_itself_unchanged():
    calls = []

    def cut(laser, width_um, *, speed_mm_s=2.0, cut_number=None):
        calls.append((laser, width_um, speed_mm_s, cut_number))
        yield "cut"

    namespace = {"cut": cut, "laser": object()}
    assert require_cut_numbers(namespace) == ["cut"]
    queued = namespace["cut"]
    assert queued is not cut and queued.__name__ == "cut"
    parameter = inspect.signature(queued).parameters["cut_number"]
    assert parameter.default is inspect.Parameter.empty and parameter.annotation is int
    assert list(queued("mill", 100.0, cut_number=4)) == ["cut"]
    assert calls == [("mill", 100.0, 2.0, 4)]
    assert require_cut_numbers({"cut": queued}) == []  # already required: left alone


def _validate(namespace, plan):
    plans, devices = _descriptions(namespace)
    return profile_ops.validate_plan(plan, allowed_plans=plans, allowed_devices=devices)


@pytest.mark.parametrize("plan_name", ["slice_and_view", "kintsugi_face"])
def test_chamber_geometry_and_limits_are_validated_at_item_add(plan_name):
    namespace = _namespace("fibsem")
    args = ["pfib", 1, 0.1] if plan_name == "slice_and_view" else ["pfib"]

    def check(**kwargs):
        return _validate(namespace, {"name": plan_name, "args": args, "kwargs": kwargs})

    good = {
        "geometry": {"sem_fib_deg": 52, "holder_pretilt_deg": 38.0},
        "limits": {"tilt_range_deg": [-5.0, 55.0], "exclusive": [["cbs", "eds"]]},
    }
    ok, message = check(**good)
    assert ok, message
    assert check(geometry=None)[0]
    for bad, words in [
        ({"geometry": {"sem_fib_deg": "wide"}}, ("geometry", "float")),
        ({"geometry": {"sem_fib": 52.0}}, ("geometry", "sem_fib_deg")),  # no such field
        ({"geometry": 52.0}, ("geometry", "dictionary")),
        ({"limits": {"tilt_range": [0.0, 1.0]}}, ("limits", "tilt_range_deg")),
        ({"limits": {"exclusive": [["cbs", 3]]}}, ("limits",)),
    ]:
        ok, message = check(**bad)
        assert not ok, bad
        assert all(word in message for word in words), (bad, message)


def test_a_chamber_mapping_becomes_its_dataclass_or_is_refused():
    from multiscope.analysis.fibsem_geometry import ChamberGeometry, ChamberLimits
    from multiscope.plans.preflight import PlanArgumentError
    from multiscope.plans.slice_and_view import chamber_part

    limits = chamber_part("limits", {"tilt_range_deg": [-5, 55]}, ChamberLimits)
    assert limits == ChamberLimits(tilt_range_deg=(-5, 55))
    assert chamber_part("geometry", None, ChamberGeometry) == ChamberGeometry()
    geometry = ChamberGeometry(sem_fib_deg=54.0)
    assert chamber_part("geometry", geometry, ChamberGeometry) is geometry
    # what the manager cannot tell apart (a number where a pair goes) the plan refuses
    with pytest.raises(PlanArgumentError, match=r"limits.tilt_range_deg = 5.0"):
        chamber_part("limits", {"tilt_range_deg": 5.0}, ChamberLimits)
    with pytest.raises(PlanArgumentError, match="no field"):
        chamber_part("geometry", {"tilt": 1.0}, ChamberGeometry)


class _Session:
    def __init__(self, calls):
        self.calls = calls

    def close(self):
        self.calls.append("session.close")


def test_the_environment_close_waits_for_the_session_close():
    from bluesky_queueserver.manager.worker import RunEngineWorker

    # The private method wrapped must exist in the pinned queueserver (0.0.25).
    assert callable(RunEngineWorker._worker_shutdown_code)
    calls = []
    worker = RunEngineWorker.__new__(RunEngineWorker)  # no process, no pipes
    worker._worker_shutdown_code = lambda: calls.append("worker shutdown")
    assert close_with_environment(_Session(calls), process=worker)
    worker._worker_shutdown_code()
    assert calls == ["session.close", "worker shutdown"]
    assert not close_with_environment(_Session(calls))  # not in a worker: nothing wrapped
