"""Pause, then stop / abort / halt; and a plan that raises (docs/stack-facts.md, fault row 6).

Inject the interruption during a step scan over CA; expect the documented exit
status, exactly one stop document, the RunEngine idle within 1 s, and the run
readable in the catalog.
"""

import threading
import time

import pytest
from bluesky import plan_stubs as bps
from bluesky.utils import RunEngineInterrupted

from multiscope.plans.scans import line_scan
from multiscope.session import configure_session

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def session(demo_ioc, tmp_path_factory):
    session = configure_session(
        {},
        "demo",
        data_dir=tmp_path_factory.mktemp("interrupts"),
        prefix=demo_ioc.prefix,
        table=False,
        progress=False,
        suspenders=False,
    )
    for device in session.devices.values():
        device.wait_for_connection(timeout=10)
    yield session
    session.close()


def _documents(session):
    documents = []
    token = session.RE.subscribe(lambda name, doc: documents.append((name, doc)))
    return documents, token


@pytest.mark.parametrize(
    ("action", "exit_status"), [("stop", "success"), ("abort", "abort"), ("halt", "abort")]
)
def test_pause_then_stop_abort_halt(session, action, exit_status):
    RE = session.RE
    m1, beam = session.devices["m1"], session.devices["beam_current"]
    documents, token = _documents(session)

    def pause_after_three_events():
        while sum(1 for name, _ in documents if name == "event") < 3:
            time.sleep(0.002)
        RE.request_pause(defer=False)

    thread = threading.Thread(target=pause_after_three_events, daemon=True)
    thread.start()
    with pytest.raises(RunEngineInterrupted):
        RE(line_scan([beam], m1, -1, 1, 200))
    thread.join(5)
    assert RE.state == "paused"
    t0 = time.monotonic()
    getattr(RE, action)()
    idle_after = time.monotonic() - t0
    RE.unsubscribe(token)
    assert RE.state == "idle"
    assert idle_after < 1.0, idle_after
    stops = [doc for name, doc in documents if name == "stop"]
    assert len(stops) == 1 and stops[0]["exit_status"] == exit_status
    assert session.catalog.drain(30)
    run = session.catalog.run(stops[0]["run_start"])
    assert run.metadata["stop"]["exit_status"] == exit_status
    assert len(run["primary"].read()["m1"]) >= 3


def test_plan_that_raises_ends_fail_with_one_stop(session):
    RE = session.RE
    documents, token = _documents(session)

    def plan():
        from bluesky import preprocessors as bpp

        @bpp.run_decorator(md={"plan_name": "broken"})
        def inner():
            yield from bps.trigger_and_read([session.devices["beam_current"]])
            raise RuntimeError("analysis said no")

        return (yield from inner())

    with pytest.raises(RuntimeError, match="analysis said no"):
        RE(plan())
    RE.unsubscribe(token)
    assert RE.state == "idle"
    stops = [doc for name, doc in documents if name == "stop"]
    assert len(stops) == 1 and stops[0]["exit_status"] == "fail"
    assert "analysis said no" in stops[0]["reason"]
