"""The safe-state mechanism on in-process fakes: every exit puts the instrument back.

Success, an exception, ``RE.abort()`` and ``RE.stop()`` run the restore (before the
stop document); ``RE.halt()`` does not, and ``go_safe`` then closes the shutter. A
failing or hanging step is logged and the next one still runs, within its timeout.
"""

import threading
import time

import pytest
from bluesky import RunEngine
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.utils import RunEngineInterrupted
from fakes import FakeCamera, FakeSample, FakeShutter
from ophyd import Signal
from ophyd.status import Status

from multiscope.plan_stubs.safe_state import (
    Restore,
    SafeState,
    SafeStateError,
    SetTo,
    Stop,
    go_safe,
    safe_state_wrapper,
    txm_safe_state,
)


@pytest.fixture
def rig():
    return FakeCamera(name="camera"), FakeSample(), FakeShutter(name="shutter", value="close")


@pytest.fixture
def recorded():
    RE = RunEngine({})
    documents, messages = [], []
    RE.subscribe(lambda name, doc: documents.append((name, doc)))
    RE.msg_hook = messages.append
    return RE, documents, messages


def _changes_everything(camera, sample, shutter, then=None):
    """Open the shutter, sample out, fly speed, new exposure; then ``then`` (a plan)."""
    yield from bps.mv(camera.cam.acquire_time, 0.5, sample.theta.velocity, 40.0)
    yield from bps.mv(shutter, "open", sample.x, 300.0)
    yield from bps.mv(sample.theta, 90.0)
    if then is not None:
        yield from then()


def _wrapped_run(camera, sample, shutter, then=None):
    safe = txm_safe_state(shutter, camera=camera, sample=sample)

    @bpp.run_decorator(md={"plan_name": "changes_everything"})
    def run():
        yield from safe_state_wrapper(_changes_everything(camera, sample, shutter, then), safe)

    return run()


def _is_safe(camera, sample, shutter):
    return (
        shutter.get() == "close"
        and sample.x.position == 0.0
        and sample.theta.velocity.get() == 90.0
        and camera.cam.acquire_time.get() == 0.1
    )


def test_txm_steps_in_order_from_the_devices_a_plan_uses(rig):
    camera, sample, shutter = rig
    safe = txm_safe_state(shutter, camera=camera, sample=sample)
    assert safe.names == [
        "close shutter", "stop sample_theta", "restore sample_theta speed",
        "restore camera acquire_time", "sample_x back",
    ]  # fmt: skip
    # Only the parts a plan has: the focus calibration has no sample.
    assert txm_safe_state(shutter, camera=camera).names == [
        "close shutter", "restore camera acquire_time",
    ]  # fmt: skip


def test_success_restores_before_the_stop_document_and_stops_nothing(rig, recorded):
    camera, sample, shutter = rig
    RE, documents, messages = recorded
    RE(_wrapped_run(camera, sample, shutter))
    assert _is_safe(camera, sample, shutter)
    assert sample.theta.position == 90.0  # the rotation's angle is not restored, its speed is
    commands = [m.command for m in messages]
    assert "stop" not in commands  # nothing moves after success
    closes = [i for i, m in enumerate(messages) if m.command == "set" and m.obj is shutter]
    assert closes[-1] < commands.index("close_run")
    assert documents[-1][1]["exit_status"] == "success"


def test_exception_restores_everything_and_keeps_the_error(rig, recorded):
    camera, sample, shutter = rig
    RE, documents, messages = recorded

    def fail():
        yield from bps.null()
        raise RuntimeError("rotation amplifier fault")

    with pytest.raises(RuntimeError, match="amplifier fault"):
        RE(_wrapped_run(camera, sample, shutter, fail))
    assert _is_safe(camera, sample, shutter)
    assert any(m.command == "stop" and m.obj is sample.theta for m in messages)
    stop = documents[-1][1]
    assert stop["exit_status"] == "fail" and "amplifier fault" in stop["reason"]


@pytest.mark.parametrize(("action", "exit_status"), [("abort", "abort"), ("stop", "success")])
def test_abort_and_stop_after_a_pause_restore_everything(rig, recorded, action, exit_status):
    camera, sample, shutter = rig
    RE, documents, _ = recorded

    def pause():
        yield from bps.checkpoint()
        yield from bps.pause()

    with pytest.raises(RunEngineInterrupted):
        RE(_wrapped_run(camera, sample, shutter, pause))
    assert RE.state == "paused" and shutter.get() == "open"
    getattr(RE, action)()
    assert RE.state == "idle"
    assert _is_safe(camera, sample, shutter)
    assert documents[-1][1]["exit_status"] == exit_status


def test_halt_runs_no_cleanup_and_go_safe_closes_the_shutter(rig, recorded):
    camera, sample, shutter = rig
    RE, documents, _ = recorded

    def pause():
        yield from bps.checkpoint()
        yield from bps.pause()

    with pytest.raises(RunEngineInterrupted):
        RE(_wrapped_run(camera, sample, shutter, pause))
    RE.halt()
    # bluesky closes a halted plan: no finally runs, the shutter stays open.
    assert shutter.get() == "open" and sample.x.position == 300.0
    RE(go_safe(txm_safe_state(shutter, camera=camera, sample=sample)))
    assert shutter.get() == "close"
    assert sample.x.position == 300.0  # nothing recorded to go back to: left alone


class _NeverArrives(Signal):
    """A device whose moves never finish (an IOC that stopped answering)."""

    def set(self, value, **kwargs):
        return Status(obj=self)


class _Refuses(Signal):
    """A device that refuses at once (disconnected)."""

    def set(self, value, **kwargs):
        raise TimeoutError(f"{self.name}: not connected")


@pytest.mark.parametrize("dead", [_NeverArrives, _Refuses])
def test_a_dead_device_does_not_block_the_steps_after_it(dead, recorded):
    RE, documents, _ = recorded
    blank = dead(name="ion_beam_blank", value="On")
    needle = Signal(name="gas_needle", value="Inserted")
    emission = Signal(name="laser_emission", value=1)
    safe = SafeState([
        SetTo(blank, "Blanked", name="blank ion beam", timeout_s=0.3),
        SetTo(needle, "Retracted", name="retract gas needle"),
        SetTo(emission, 0, name="laser emission off"),
    ])  # fmt: skip

    @bpp.run_decorator(md={})
    def run():
        def fail():
            yield from bps.null()
            raise RuntimeError("stage crash")

        yield from safe_state_wrapper(fail(), safe)

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="stage crash"):  # the plan's error, not the cleanup's
        RE(run())
    assert time.monotonic() - t0 < 5
    assert needle.get() == "Retracted" and emission.get() == 0


def test_a_failed_safe_state_fails_a_successful_plan(recorded):
    RE, documents, _ = recorded
    safe = SafeState([SetTo(_Refuses(name="shutter", value="open"), "close", name="close shutter")])

    @bpp.run_decorator(md={})
    def run():
        yield from safe_state_wrapper(bps.null(), safe)

    with pytest.raises(SafeStateError, match="close shutter"):
        RE(run())
    assert documents[-1][1]["exit_status"] == "fail"


def test_steps_compose_and_anything_else_is_refused():
    velocity = Signal(name="velocity", value=1.0)
    combined = SafeState([Restore(velocity)]) + SafeState([Stop(velocity, name="stop it")])
    assert combined.names == ["restore velocity", "stop it"]
    with pytest.raises(TypeError, match="not a SafeStep"):
        SafeState([lambda: None])


class _FailsLater(Signal):
    """An acquisition whose status fails ``delay_s`` after it starts (interrupted)."""

    def set(self, value, **kwargs):
        status = Status(obj=self)
        threading.Timer(0.2, status.set_exception, args=(RuntimeError("0 of 20 frames"),)).start()
        return status


class _Slow(Signal):
    """A shutter that takes 0.5 s to close."""

    def set(self, value, **kwargs):
        status = Status(obj=self)

        def arrive():
            self.put(value)
            status.set_finished()

        threading.Timer(0.5, arrive).start()
        return status


def test_a_stray_failure_landing_in_a_step_does_not_skip_it(recorded, caplog):
    # An acquisition interrupted by the plan's error fails while the shutter closes:
    # the RunEngine throws that failure into the close step, which is tried again.
    RE, documents, _ = recorded
    acquisition = _FailsLater(name="acquisition", value=0)
    shutter = _Slow(name="shutter", value="open")
    safe = SafeState([SetTo(shutter, "close", name="close shutter", timeout_s=5)])

    @bpp.run_decorator(md={})
    def run():
        def fail():
            yield from bps.abs_set(acquisition, 1, group="fly")  # never waited for
            raise RuntimeError("rotation refused")

        yield from safe_state_wrapper(fail(), safe)

    with pytest.raises(RuntimeError, match="rotation refused"):
        RE(run())
    assert shutter.get() == "close"
    logged = [r.getMessage() for r in caplog.records if r.name.endswith("safe_state")]
    assert any("close shutter again" in m and "acquisition" in m for m in logged), logged
    assert not any("failed" in m for m in logged), logged
