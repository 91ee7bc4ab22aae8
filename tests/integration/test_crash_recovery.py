"""Kill the acquiring process mid-run; `multiscope catalog recover` restores the run (row 7).

The acquiring process is a real session in a subprocess driving the demo IOC
over CA; it prints one line per event so the test knows how many were emitted.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from multiscope.catalog import Catalog

pytestmark = pytest.mark.integration

ACQUIRE = textwrap.dedent(
    """
    import sys
    from multiscope.plans.scans import line_scan
    from multiscope.session import configure_session

    data_dir, prefix = sys.argv[1], sys.argv[2]
    session = configure_session({}, "demo", data_dir=data_dir, prefix=prefix,
                                table=False, progress=False)
    for device in session.devices.values():
        device.wait_for_connection(timeout=10)
    session.devices["cam"].cam.acquire_time.set(0.002).wait(5)
    def report(name, doc):
        if name == "event":
            print("event", doc["seq_num"], flush=True)
    session.RE.subscribe(report)
    session.RE(line_scan([session.devices["cam"], session.devices["beam_current"]],
                         session.devices["m1"], 0, 0.3, 400))
    """
)


def test_killed_session_is_recovered_with_all_but_one_event(demo_ioc, tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-c", ACQUIRE, str(tmp_path), demo_ioc.prefix],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    emitted = 0
    deadline = time.monotonic() + 120
    try:
        for line in process.stdout:
            if line.startswith("event"):
                emitted = int(line.split()[1])
                if emitted >= 60:
                    os.kill(process.pid, signal.SIGKILL)
                    break
            assert time.monotonic() < deadline, "acquisition too slow"
    finally:
        process.kill()
        process.wait(10)
    assert emitted >= 60, "the acquiring process ended before the kill"

    result = subprocess.run(
        [sys.executable, "-m", "multiscope", "--data-dir", str(tmp_path), "catalog", "recover"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fail" in result.stdout or "written" in result.stdout, result.stdout

    with Catalog.embedded(tmp_path) as catalog:
        run = catalog.run(-1)
        stop = run.metadata["stop"]
        assert stop["exit_status"] == "fail"
        kept = len(run["primary"].read()["m1"])
        # Every event the process emitted before the kill, but at most one, is in the catalog.
        assert emitted - 1 <= kept <= emitted + 1, (emitted, kept)
        assert stop["num_events"]["primary"] == kept
