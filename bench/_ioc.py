"""The simulated demo IOC a benchmark talks to: a free loopback port, prefix ``BENCH:``."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def demo_ioc(prefix: str = "BENCH:"):
    """Start the demo IOC, point this process's CA clients at it; yield its work directory.

    The control layer is caproto (no libca); the IOC is stopped by PID on exit.
    """
    from multiscope import config, simctl

    workdir = Path(tempfile.mkdtemp(prefix="multiscope-bench-"))
    port = simctl.free_port()
    config.apply_ca_client_environment(config.ca_client_environment([port]))
    os.environ["OPHYD_CONTROL_LAYER"] = "caproto"
    ioc = simctl.start_ioc("demo", prefix=prefix, port=port, log_dir=workdir)
    try:
        simctl.wait_until_ready(ioc, timeout=15)
        yield workdir
    finally:
        simctl.stop_ioc(ioc.pid)
