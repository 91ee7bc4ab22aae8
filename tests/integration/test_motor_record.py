"""The simulated motor record against stock clients: pyepics' ``epics.Motor`` and
``caput``, ophyd's ``EpicsMotor`` and a plain caproto client, all used unchanged.

One demo IOC for the module; its axis ``m1`` moves at ``VELO`` 5 mm/s with ``ACCL``
0.02 s between soft limits -10 and 10 mm. Each test starts with the axis at rest at
0 in the default calibration (OFF 0, DIR Pos, SET Use, SPMG Go). The semantics
checked are the motor record's (docs/decisions/0024-motor-record-semantics.md).

pyepics reads the EPICS client environment when it creates its context; the pool
fixture (``ca_port_pool``) set it before, so pyepics finds the module's IOC.
"""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from conftest import start_sim_ioc
from waiting import wait_until

from sim_devices.motor import Trajectory

pytestmark = pytest.mark.integration

VELO, ACCL = 5.0, 0.02  # the demo IOC's m1
# MSTA bits as the motor record documents them (motorRecord.html, MSTA; motor.h)
MSTA_DIRECTION, MSTA_DONE, MSTA_MOVING, MSTA_HOMED = 1 << 0, 1 << 1, 1 << 10, 1 << 14


def duration(distance: float) -> float:
    """Seconds the IOC's profile takes for ``distance`` mm at m1's speed."""
    return Trajectory(0.0, distance, VELO, ACCL).duration


@pytest.fixture(scope="module")
def ioc(ca_port_pool, tmp_path_factory):
    from multiscope import simctl

    running, process = start_sim_ioc(ca_port_pool, tmp_path_factory.mktemp("motor-record"))
    yield running
    simctl.stop_ioc(process.pid)


@pytest.fixture(scope="module")
def epics(ioc):
    """pyepics, imported only here (ophyd stays on the caproto layer)."""
    import epics

    yield epics


@pytest.fixture(scope="module")
def ca(ioc):
    """A plain caproto threading client (puts with a completion callback)."""
    from caproto.threading.client import Context

    context = Context()
    yield context
    context.disconnect()


@pytest.fixture
def m1(ioc, epics):
    """The axis at rest at 0 in the default calibration; its record name."""
    name = f"{ioc.prefix}m1"
    for field, value in (("SPMG", 3), ("SET", 0), ("DIR", 0), ("OFF", 0.0), ("VELO", VELO)):
        epics.caput(f"{name}.{field}", value, wait=True, timeout=10)
    assert epics.caput(f"{name}.VAL", 0.0, wait=True, timeout=30) == 1
    wait_until(
        lambda: get(epics, f"{name}.DMOV") == 1 and get(epics, f"{name}.RBV") == 0.0,
        timeout=10,
        message="m1 at rest at 0",
    )
    return name


def slow(epics, name, velocity=0.5):
    """Slow the axis so that an interruption lands mid-move however loaded the machine."""
    assert epics.caput(f"{name}.VELO", velocity, wait=True, timeout=10) == 1


def get(epics, pv):
    return epics.caget(pv, use_monitor=False, timeout=10)


def pv(ca, name):
    (channel,) = ca.get_pvs(name, timeout=10)
    channel.wait_for_connection(timeout=10)
    return channel


def put_with_callback(ca, name, value):
    """Put with completion, not waited for; the event is set when the IOC completes it."""
    done = threading.Event()
    pv(ca, name).write([value], wait=False, notify=True, callback=lambda _response: done.set())
    return done


# -- put with completion ---------------------------------------------------------------


def test_caput_wait_returns_when_the_move_is_done(m1, epics):
    expected = duration(2.0)
    t0 = time.monotonic()
    assert epics.caput(f"{m1}.VAL", 2.0, wait=True, timeout=30) == 1
    elapsed = time.monotonic() - t0
    # Completed at DMOV = 1: already there, and not before the profile's end.
    assert get(epics, f"{m1}.DMOV") == 1
    assert get(epics, f"{m1}.RBV") == pytest.approx(2.0)
    assert elapsed >= 0.9 * expected, f"returned after {elapsed:.3f} s of a {expected:.3f} s move"


def test_pending_put_does_not_hold_other_channels(m1, epics, ca, ioc):
    slow(epics, m1)
    done = put_with_callback(ca, m1, 6.0)  # 12 s at 0.5 mm/s
    t0 = time.monotonic()
    assert get(epics, f"{ioc.prefix}ring:current") > 0
    assert epics.caput(f"{m1}.TWV", 0.5, wait=True, timeout=10) == 1
    served = time.monotonic() - t0
    assert not done.is_set(), f"other channels served after {served:.2f} s, the move over"
    epics.caput(f"{m1}.STOP", 1)
    assert done.wait(10)


# -- pyepics' Motor ---------------------------------------------------------------------


def test_pyepics_motor_connects_and_moves(m1, epics):
    motor = epics.Motor(m1)  # refuses anything whose RTYP is not "motor"
    for field in motor._init_list[:-1]:  # the last is the optional "<name>_able" PV
        assert motor.PV(field).connected, field
    assert motor.get("PREC") == 4 and motor.get("EGU") == "mm"
    assert motor.move(-1.5, wait=True) == 0  # 0: finished, no limit violation
    assert motor.get_position(readback=True) == pytest.approx(-1.5)
    assert motor.get("LVIO") == 0 and motor.get("DMOV") == 1


def test_target_outside_soft_limits_sets_lvio_and_does_not_move(m1, epics):
    motor = epics.Motor(m1)
    assert motor.move(12.0, wait=True) == -12  # the client's own check, nothing sent
    assert motor.move(12.0, wait=True, ignore_limits=True) == -4  # sent: the record's LVIO
    assert get(epics, f"{m1}.LVIO") == 1
    assert get(epics, f"{m1}.VAL") == pytest.approx(0.0)  # restored to the last target
    assert get(epics, f"{m1}.RBV") == pytest.approx(0.0)
    assert get(epics, f"{m1}.DMOV") == 1
    assert motor.move(1.0, wait=True) == 0
    assert get(epics, f"{m1}.LVIO") == 0


def test_tweak_and_relative_moves(m1, epics):
    motor = epics.Motor(m1)
    motor.put("TWV", 0.25, wait=True)
    assert motor.tweak("forward", wait=True) == 0
    assert get(epics, f"{m1}.RBV") == pytest.approx(0.25)
    assert motor.tweak("reverse", wait=True) == 0
    assert motor.tweak("reverse", wait=True) == 0
    assert get(epics, f"{m1}.RBV") == pytest.approx(-0.25)
    assert get(epics, f"{m1}.TWF") == 0 and get(epics, f"{m1}.TWR") == 0
    t0 = time.monotonic()
    assert epics.caput(f"{m1}.RLV", 2.25, wait=True, timeout=30) == 1
    assert time.monotonic() - t0 >= 0.9 * duration(2.25)
    assert get(epics, f"{m1}.RBV") == pytest.approx(2.0)
    assert get(epics, f"{m1}.VAL") == pytest.approx(2.0)
    assert get(epics, f"{m1}.RLV") == 0.0
    assert motor.move(1.0, relative=True, wait=True) == 0
    assert get(epics, f"{m1}.RBV") == pytest.approx(3.0)


def test_stop_ends_the_move_and_completes_its_put(m1, epics, ca):
    slow(epics, m1, 1.0)
    done = put_with_callback(ca, m1, 8.0)
    wait_until(lambda: get(epics, f"{m1}.RBV") > 1.0, timeout=10, message="m1 past 1")
    assert not done.is_set()  # the put is pending while the axis moves
    epics.Motor(m1).stop()
    assert done.wait(10), "the interrupted move's put never completed"
    assert get(epics, f"{m1}.DMOV") == 1 and get(epics, f"{m1}.MOVN") == 0
    here = get(epics, f"{m1}.RBV")
    assert 1.0 < here < 7.5
    assert get(epics, f"{m1}.VAL") == pytest.approx(here)  # the drive agrees with the readback
    assert get(epics, f"{m1}.STOP") == 0


def test_spmg_pause_holds_the_move_and_go_resumes_it(m1, epics, ca):
    slow(epics, m1, 1.0)
    done = put_with_callback(ca, m1, 3.0)
    wait_until(lambda: get(epics, f"{m1}.RBV") > 1.0, timeout=10, message="m1 past 1")
    epics.caput(f"{m1}.SPMG", "Pause", wait=True, timeout=10)
    wait_until(lambda: get(epics, f"{m1}.MOVN") == 0, timeout=10, message="paused")
    paused_at = get(epics, f"{m1}.RBV")
    assert 1.0 < paused_at < 3.0
    assert get(epics, f"{m1}.VAL") == pytest.approx(3.0)  # the target stays
    assert get(epics, f"{m1}.DMOV") == 0 and not done.is_set()
    epics.caput(f"{m1}.SPMG", "Go", wait=True, timeout=10)
    assert done.wait(30), "the resumed move's put never completed"
    assert get(epics, f"{m1}.RBV") == pytest.approx(3.0)


def test_spmg_stop_stops_and_holds_new_targets_until_go(m1, epics, ca):
    slow(epics, m1, 2.0)
    first = put_with_callback(ca, m1, 6.0)
    wait_until(lambda: get(epics, f"{m1}.RBV") > 1.0, timeout=10, message="m1 past 1")
    epics.caput(f"{m1}.SPMG", "Stop", wait=True, timeout=10)
    assert first.wait(10)
    stopped_at = get(epics, f"{m1}.RBV")
    assert get(epics, f"{m1}.VAL") == pytest.approx(stopped_at)
    second = put_with_callback(ca, m1, -2.0)
    wait_until(lambda: get(epics, f"{m1}.DMOV") == 0, timeout=10, message="a pending target")
    assert get(epics, f"{m1}.MOVN") == 0 and get(epics, f"{m1}.RBV") == stopped_at
    assert not second.is_set()
    epics.caput(f"{m1}.SPMG", "Go", wait=True, timeout=10)
    assert second.wait(30)
    assert get(epics, f"{m1}.RBV") == pytest.approx(-2.0)


# -- calibration: user = DIR * dial + OFF ----------------------------------------------


def test_offset_direction_and_set_position(m1, epics):
    motor = epics.Motor(m1)
    assert motor.move(2.0, wait=True) == 0
    motor.put("OFF", 5.0, wait=True)
    assert get(epics, f"{m1}.RBV") == pytest.approx(7.0)
    assert get(epics, f"{m1}.DRBV") == pytest.approx(2.0)
    assert get(epics, f"{m1}.VAL") == pytest.approx(7.0)
    assert (get(epics, f"{m1}.LLM"), get(epics, f"{m1}.HLM")) == pytest.approx((-5.0, 15.0))
    assert motor.move(8.0, wait=True) == 0
    assert get(epics, f"{m1}.DRBV") == pytest.approx(3.0)
    # DIR Neg with a variable offset: the user position stays, the user axis turns round
    motor.put("DIR", 1, wait=True)
    assert get(epics, f"{m1}.RBV") == pytest.approx(8.0)
    assert get(epics, f"{m1}.OFF") == pytest.approx(11.0)  # 8 = -3 + 11
    assert (get(epics, f"{m1}.LLM"), get(epics, f"{m1}.HLM")) == pytest.approx((1.0, 21.0))
    assert motor.move(9.0, wait=True) == 0
    assert get(epics, f"{m1}.DRBV") == pytest.approx(2.0)
    # Set mode: redefine the user position, the dial (the axis) stays where it is
    motor.set_position(0.0)
    assert get(epics, f"{m1}.RBV") == pytest.approx(0.0)
    assert get(epics, f"{m1}.DRBV") == pytest.approx(2.0)
    assert get(epics, f"{m1}.OFF") == pytest.approx(2.0)
    assert get(epics, f"{m1}.SET") == 0
    # Dial limits are unchanged by all of it
    assert (get(epics, f"{m1}.DLLM"), get(epics, f"{m1}.DHLM")) == pytest.approx((-10.0, 10.0))


def test_msta_reports_done_moving_and_direction(m1, epics):
    rest = int(get(epics, f"{m1}.MSTA"))
    assert rest & MSTA_DONE and not rest & MSTA_MOVING and rest & MSTA_HOMED
    slow(epics, m1)
    epics.caput(f"{m1}.VAL", 5.0)
    moving = wait_until(lambda: (s := int(get(epics, f"{m1}.MSTA"))) & MSTA_MOVING and s,
                        timeout=10, message="MSTA MOVING")  # fmt: skip
    assert not moving & MSTA_DONE and moving & MSTA_DIRECTION  # positive
    epics.caput(f"{m1}.STOP", 1)
    wait_until(lambda: get(epics, f"{m1}.DMOV") == 1, timeout=10, message="done")
    assert int(get(epics, f"{m1}.MSTA")) & MSTA_DONE


# -- ophyd's stock EpicsMotor ------------------------------------------------------------


@pytest.fixture
def ophyd_m1(m1):
    from ophyd import EpicsMotor

    motor = EpicsMotor(m1, name="m1")
    motor.wait_for_connection(timeout=10)
    yield motor
    motor.destroy()


def test_ophyd_epics_motor_moves_stops_and_calibrates(ophyd_m1, epics):
    from ophyd.utils import LimitError

    motor = ophyd_m1
    assert motor.limits == (-10.0, 10.0)
    motor.set(3.0).wait(10)
    assert motor.position == pytest.approx(3.0)
    with pytest.raises(LimitError):
        motor.set(11.0)
    slow(epics, motor.prefix, 1.0)
    status = motor.set(-6.0)
    wait_until(lambda: motor.position < 2.0, timeout=10, message="m1 below 2")
    motor.stop()
    with contextlib.suppress(Exception):  # ophyd may fail a stopped move's status
        status.wait(10)
    assert status.done
    wait_until(lambda: motor.motor_done_move.get() == 1, timeout=10, message="stopped")
    assert -6.0 < motor.position < 2.0
    motor.velocity.set(VELO).wait(10)
    motor.user_offset.set(1.0).wait(10)
    wait_until(lambda: motor.limits == (-9.0, 11.0), timeout=10, message="limits follow OFF")
    motor.set(10.5).wait(10)  # within the shifted user limits
    assert get(epics, f"{motor.prefix}.DRBV") == pytest.approx(9.5)
    motor.set_current_position(0.0)
    wait_until(lambda: abs(motor.position) < 1e-9, timeout=10, message="position redefined")
    assert get(epics, f"{motor.prefix}.DRBV") == pytest.approx(9.5)
