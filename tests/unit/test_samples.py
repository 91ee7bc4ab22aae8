"""The sample registry: ids checked before a run, records and histories read back in order."""

from __future__ import annotations

import importlib
import inspect

import pytest
from bluesky import RunEngine

from multiscope.plans.preflight import PlanArgumentError, sample_md
from multiscope.plans.samples import register_sample, sample_record_md
from multiscope.samples import history_from_metadata, samples_from_metadata
from multiscope.session import COMMON_PLAN_MODULES, INSTRUMENTS


@pytest.mark.parametrize("bad", [3, None, " tab-3", "tab-3 ", "tab\n3", "x" * 65])
def test_a_malformed_sample_id_is_refused(bad):
    with pytest.raises(PlanArgumentError, match="sample_id"):
        sample_md(bad)


def test_an_empty_sample_id_adds_nothing_so_the_sessions_stays():
    assert sample_md("") == {}
    assert sample_md("tab-3") == {"sample_id": "tab-3"}


def test_a_sample_record_needs_an_id_and_cannot_be_its_own_parent():
    with pytest.raises(PlanArgumentError, match="required"):
        sample_record_md("")
    with pytest.raises(PlanArgumentError, match="from itself"):
        sample_record_md("tab-3", parent_id="tab-3")
    with pytest.raises(PlanArgumentError, match="description"):
        sample_record_md("tab-3", description="x" * 501)
    md = sample_record_md("tab-3", material="NMC811", parent_id="sheet-1")
    assert md == {
        "sample_id": "tab-3",
        "sample": {"id": "tab-3", "material": "NMC811", "parent_id": "sheet-1", "description": ""},
    }


def test_register_sample_opens_and_closes_a_run_with_no_events():
    RE = RunEngine({})
    docs = []
    RE(register_sample("coin-2", material="Na-ion coin cell", description="null voltage"),
       lambda name, doc: docs.append((name, doc)))  # fmt: skip
    assert [name for name, _ in docs] == ["start", "stop"]
    start, stop = docs[0][1], docs[1][1]
    assert start["sample_id"] == "coin-2" and start["sample"]["material"] == "Na-ion coin cell"
    assert stop["exit_status"] == "success"


def test_register_sample_refuses_before_any_message():
    plan = register_sample("bad id ")
    with pytest.raises(PlanArgumentError):
        next(plan)


def _run(uid, t, plan, sample_id="tab-3", instrument="txm", **extra):
    start = {"uid": uid, "time": t, "plan_name": plan, "sample_id": sample_id,
             "instrument": instrument, **extra}  # fmt: skip
    return uid, {"start": start, "stop": {"exit_status": "success", "num_events": {"primary": 3}}}


def test_a_history_is_ordered_by_start_time_and_names_the_registering_run():
    runs = [
        _run("c" * 32, 30.0, "tomo_scan"),
        _run(
            "a" * 32,
            10.0,
            "cut_tab",
            instrument="laser",
            sample={"id": "tab-3", "material": "NMC811", "parent_id": "sheet-1"},
        ),
        _run("d" * 32, 40.0, "tomo_reconstruction", instrument="", derived_from="c" * 32),
        _run("b" * 32, 20.0, "xrm_tomo_scan", instrument="xrm"),
    ]
    history = history_from_metadata("tab-3", runs)
    assert history.plan_names == ["cut_tab", "xrm_tomo_scan", "tomo_scan", "tomo_reconstruction"]
    assert history.instruments == ["laser", "xrm", "txm"]
    assert history[3].instrument == "txm"  # the derived run is on its raw run's instrument
    assert history.record.registered_by == "a" * 32 and history.record.parent_id == "sheet-1"
    text = str(history)
    assert "NMC811, from sheet-1" in text and "cut (tab)" in text
    assert "derived from cccccccc" in text


def test_a_sample_never_registered_still_has_its_runs():
    history = history_from_metadata("coin-9", [_run("e" * 32, 1.0, "line_scan", "coin-9")])
    assert history.record is None and len(history) == 1
    assert "never registered" in str(history)


def test_samples_keep_their_first_registration():
    runs = [
        _run("b" * 32, 20.0, "register_sample", "s1", sample={"id": "s1", "material": "late"}),
        _run("a" * 32, 10.0, "register_sample", "s1", sample={"id": "s1", "material": "first"}),
        _run("c" * 32, 15.0, "register_sample", "s2", sample={"id": "s2"}),
        _run("d" * 32, 16.0, "tomo_scan", "s2"),
    ]
    records = samples_from_metadata(runs)
    assert [(r.sample_id, r.material) for r in records] == [("s1", "first"), ("s2", "")]


def _session_plans():
    modules = {m for spec in INSTRUMENTS.values() for m in spec.plan_modules}
    for module_name in sorted(modules | set(COMMON_PLAN_MODULES)):
        module = importlib.import_module(module_name)
        for name in module.__all__:
            plan = getattr(module, name)
            if inspect.isgeneratorfunction(plan):
                yield f"{module_name}.{name}", plan


# Ids from the names only: a function's repr holds its address, which differs between
# pytest-xdist workers, and workers must collect the same test ids.
@pytest.mark.parametrize("name, plan", [pytest.param(n, p, id=n) for n, p in _session_plans()])
def test_every_plan_of_every_instrument_takes_a_sample_id(name, plan):
    parameters = inspect.signature(plan).parameters
    # vertical_mosaic_tomo passes its keywords (sample_id among them) to every tile's tomo_scan.
    assert "sample_id" in parameters or "tomo_kwargs" in parameters, name


def test_only_a_run_that_succeeded_registers_its_sample():
    uid, failed = _run("a" * 32, 10.0, "cut_tab", "tab-9", instrument="laser",
                       sample={"id": "tab-9", "material": "NMC811"})  # fmt: skip
    failed["stop"]["exit_status"] = "fail"  # the enclosure tripped: no piece was made
    retry = _run(
        "b" * 32,
        20.0,
        "cut_tab",
        "tab-9",
        instrument="laser",
        sample={"id": "tab-9", "material": "NMC811", "parent_id": "sheet-2"},
    )
    open_run = (
        "c" * 32,
        {
            "start": {
                "uid": "c" * 32,
                "time": 30.0,
                "plan_name": "cut_tab",
                "sample_id": "tab-8",
                "sample": {"id": "tab-8"},
            }
        },
    )
    history = history_from_metadata("tab-9", [(uid, failed), retry])
    assert history.record.registered_by == "b" * 32 and history.record.parent_id == "sheet-2"
    assert len(history) == 2  # the failed cut stays in the history
    assert [r.sample_id for r in samples_from_metadata([(uid, failed), retry, open_run])] == [
        "tab-9"
    ]


def test_a_zoom_says_which_survey_it_zoomed_from():
    survey = _run("a" * 32, 1.0, "xrm_tomo_scan", "coin-2", "xrm", xrm={"recipe": "coin_survey"})
    zoom = _run(
        "b" * 32,
        2.0,
        "xrm_tomo_scan",
        "coin-2",
        "xrm",
        xrm={"recipe": "coin_zoom"},
        scout={"survey_uid": "a" * 32},
    )
    steps = list(history_from_metadata("coin-2", [survey, zoom]))
    assert "recipe coin_survey" in steps[0].what
    assert "zoomed" in steps[1].what and "aaaaaaaa" in steps[1].what
