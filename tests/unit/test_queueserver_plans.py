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
from multiscope.queueserver import USER_GROUP_PERMISSIONS
from multiscope.session import INSTRUMENTS, instrument_plans


def _namespace(instrument: str) -> dict:
    """The instrument's plans beside two simulated devices named like the demo's."""
    m1 = SynAxis(name="m1")
    m1.limits = (-5.0, 5.0)
    cam = SynGauss("cam", m1, "m1", center=0.0, Imax=1.0)
    return {**instrument_plans(instrument), "m1": m1, "cam": cam}


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
