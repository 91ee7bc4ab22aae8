"""One sample across instruments: every run names it, the catalog gives its history in order.

Sessions of the laser mill, the lab XRM, the TXM and the PFIB-SEM, one after the
other, on one data directory (as a facility's instruments share one catalog): the
tab is cut (the cut registers it, from its sheet), surveyed, imaged and sectioned;
the history is read from Python and from the command line. The TXM's simulator
builds the tab the cut measured (:func:`multiscope.demos.chain.chain_tab`, as the
demos do).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import fibsem_session, finished_run, laser_session, txm_session, xrm_session

from multiscope.demos.chain import DEFAULT_TAB_WIDTH_UM, chain_tab
from sim_devices.physics.phantom import DEFAULT_TAB_WIDTH_UM as SIMULATORS_DEFAULT_UM

pytestmark = pytest.mark.integration


def _cli(data_dir, *args):
    return subprocess.run(
        [sys.executable, "-m", "multiscope", "--data-dir", str(data_dir), "catalog", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_samples_history_spans_instruments_in_order(ca_port_pool, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("history-data")
    with laser_session(ca_port_pool, tmp_path_factory, "history-laser", data_dir=data_dir) as (
        session,
        _,
    ):
        RE, plans = session.RE, session.plans
        (sheet,) = RE(plans["register_sample"]("sheet-1", material="NMC811"))
        (tab,) = RE(plans["cut_tab"](session.devices["laser"], 100.0, 500.0, 600.0, 800.0,
                                     origin_um=(1000.0, 300.0), sample_id="tab-3",
                                     parent_id="sheet-1"))  # fmt: skip
        cut = finished_run(session, tab)
        measured = float(cut["cut"].read()["piece_row_width_um"].values[-1])
        # The chain's tab is the piece this cut freed, as wide as the mill measured it.
        chain = chain_tab(session.catalog, "tab-3")
    assert abs(measured - 100.0) < 5.0  # the 100 um asked for (the laser's 5 um), not 80
    assert (chain.cut_uid, chain.width_um) == (tab, round(measured, 1))
    assert chain.ioc_args()[-2:] == ["--tab-width-um", repr(chain.width_um)]
    with xrm_session(ca_port_pool, tmp_path_factory, "history-xrm", data_dir=data_dir) as (
        session,
        _,
    ):
        (survey,) = session.RE(session.plans["xrm_tomo_scan"](
            session.devices["xrm"], "coin_survey", n_projections=21, voi_mm=(0.0, 0.0, 0.0),
            binning=8, num_darks=2, num_flats=2, sample_id="tab-3"))  # fmt: skip
        assert session.drain(300)
        finished_run(session, survey)
    with txm_session(ca_port_pool, tmp_path_factory, "history-txm", data_dir=data_dir,
                     extra_args=chain.ioc_args()) as (session, txm):  # fmt: skip
        from ophyd import EpicsSignalRO

        # The simulator images the tab the mill cut (its ground truth says so over CA).
        for name, value in (("tab_width_um", chain.width_um), ("seed", chain.seed)):
            truth = EpicsSignalRO(f"{txm.prefix}truth:{name}", name=name)
            truth.wait_for_connection(timeout=10)
            assert truth.get() == pytest.approx(value, abs=1e-9), name
        RE, plans, d = session.RE, session.plans, session.devices
        (frames,) = RE(plans["count_frames"]([d["camera"]], 2, sample_id="tab-3"))
        (other,) = RE(plans["count_frames"]([d["camera"]], 1, sample_id="coin-2"))
        # A sample imaged but never cut: the simulators' default tab stands in.
        finished_run(session, other)
        uncut = chain_tab(session.catalog, "coin-2")
        assert uncut.width_um == DEFAULT_TAB_WIDTH_UM == SIMULATORS_DEFAULT_UM
        assert uncut.cut_uid == ""
        assert "not cut" in uncut.source
        # A sample set for the session names every run that does not name its own.
        RE.md["sample_id"] = "tab-3"
        d["sample"].theta.velocity.set(180).wait(10)
        (tomo,) = RE(plans["tomo_scan"](d["camera"], d["sample"], d["shutter"],
                                        num_projections=21, exposure_s=0.02, num_darks=2,
                                        num_flats=2, flat_policy="start"))  # fmt: skip
        del RE.md["sample_id"]
        assert session.drain(300)
        finished_run(session, tomo)
    with fibsem_session(ca_port_pool, tmp_path_factory, "history-fib", data_dir=data_dir) as (
        session,
        _,
    ):
        pfib = session.devices["pfib"]
        (kintsugi,) = session.RE(session.plans["kintsugi_face"](pfib, sample_id="tab-3"))
        finished_run(session, kintsugi)
        history = session.catalog.sample_history("tab-3")
        samples = session.catalog.samples()

    steps = list(history)
    raw = [s.uid for s in steps if s.derived_from is None]
    assert raw == [tab, survey, frames, tomo, kintsugi], history
    assert sheet not in raw and other not in raw
    # The live reconstruction of the tomogram is the sample's too, after its raw run.
    derived = [s for s in steps if s.derived_from == tomo]
    assert derived and all(s.time > steps[raw.index(tomo)].time for s in derived)
    assert history.plan_names[0] == "cut_tab" and "cut (tab)" in history[0].what
    assert history.instruments == ["laser", "xrm", "txm", "fibsem"]
    assert all(s.exit_status == "success" for s in steps)
    assert history.record.parent_id == "sheet-1" and history.record.registered_by == tab
    assert [r.sample_id for r in samples] == ["sheet-1", "tab-3"]

    printed = _cli(data_dir, "history", "tab-3")
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert "NMC811, from sheet-1" in lines[0]
    order = [next(i for i, line in enumerate(lines) if uid[:8] in line) for uid in raw]
    assert order == sorted(order), printed.stdout
    listed = _cli(data_dir, "samples")
    assert listed.returncode == 0 and "tab-3" in listed.stdout and "sheet-1" in listed.stdout
