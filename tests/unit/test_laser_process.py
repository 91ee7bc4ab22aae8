"""A resumed run waits for the instrument's process on its monitor, within a limit
taken from the process's own duration on the instrument's clock (in-process fakes)."""

from __future__ import annotations

import threading
import time

import pytest
from ophyd import Signal
from ophyd.sim import make_fake_device

from multiscope.devices import process
from multiscope.devices.laser import Emission, LaserCut
from multiscope.devices.process import ProcessStillRunningError, wait_until_idle


@pytest.fixture
def cut():
    device = make_fake_device(LaserCut)("FAKE:", name="cut")
    device.path_time_s.sim_put(0.2)
    device.start.time_scale.sim_put(1.0)
    device.start._busy = Signal(name="cut_busy", value=1)
    return device


def test_a_resume_fails_clearly_when_the_process_outlasts_its_duration(cut, monkeypatch):
    monkeypatch.setattr(process, "PROCESS_MARGIN_S", 0.2)
    limit = cut.start.timeout_for(None)
    assert limit == pytest.approx(0.2 * 1.5 + 0.2)
    began = time.monotonic()
    with pytest.raises(ProcessStillRunningError, match="still runs the process"):
        cut.start.resume()
    assert limit <= time.monotonic() - began < limit + 2.0


def test_a_resume_goes_on_as_soon_as_the_process_ends(cut):
    busy = cut.start._busy
    assert cut.start.timeout_for(None) > 30.0
    ender = threading.Timer(0.2, lambda: busy.put(0))
    began = time.monotonic()
    ender.start()
    cut.start.resume()
    assert time.monotonic() - began < 10.0
    assert busy.get() == 0
    ender.join()


def test_the_wait_follows_every_busy_signal():
    cutting, depositing = Signal(name="cutting", value=1), Signal(name="depositing", value=0)
    assert not wait_until_idle([cutting, depositing], 0.1)
    depositing.put(1)
    ender = threading.Timer(0.1, lambda: (cutting.put(0), depositing.put(0)))
    ender.start()
    assert wait_until_idle([cutting, depositing], 10.0)
    ender.join()
    assert wait_until_idle([cutting, depositing], 0.0)  # idle already: no wait


@pytest.mark.parametrize(("path_s", "scale"), [(10.0, 1.0), (10.0, 5.0), (100.0, 20.0)])
def test_a_pause_waits_for_the_cut_as_long_as_its_duration_allows(path_s, scale):
    emission = make_fake_device(Emission)("FAKE:", name="emission")
    emission.cut_time_s.sim_put(path_s)
    emission.time_scale.sim_put(scale)
    assert emission.cut_limit_s() == pytest.approx(path_s * scale * 1.5
                                                   + process.PROCESS_MARGIN_S)  # fmt: skip


@pytest.fixture
def emission():
    device = make_fake_device(Emission)("FAKE:", name="emission")
    device.cut_time_s.sim_put(10.0)
    device.time_scale.sim_put(1.0)
    device.cut_count.sim_put(3)
    device.cutting.sim_put(0)
    device.refusal.sim_put("")
    device.command.sim_put("Off")
    device.set("On").wait(5)
    return device


def _switched_off(device) -> threading.Event:
    off = threading.Event()
    device.command.subscribe(lambda value=None, **_: off.set() if value == "Off" else None,
                             run=False)  # fmt: skip
    return off


def test_a_pause_in_a_cut_switches_emission_off_only_once_the_cut_has_ended(emission):
    emission.cutting.sim_put(1)
    emission.cut_count.sim_put(4)  # the instrument counts cut 4 as it starts
    off = _switched_off(emission)
    emission.pause()
    assert not off.wait(0.3)  # still cutting: the beam stays on
    assert emission.command.get() == "On"
    emission.cutting.sim_put(0)
    assert off.wait(10)
    emission.resume()
    assert emission.command.get() == "Off"  # cut 4 was made: never on again for it


def test_a_pause_before_the_cut_starts_puts_emission_back_on_for_it(emission):
    off = _switched_off(emission)
    emission.pause()
    assert off.wait(10)
    emission.resume()
    assert emission.command.get() == "On"  # no cut since emission went on: it is to come
