"""The simulated TXM IOC a demo needs: reuse the user's if it matches, else a dedicated one.

A dedicated TXM comes with a dedicated ring IOC (its beam current, decision 0009).
The TXM demos image the chain's tab (:func:`multiscope.demos.chain.chain_tab_in`): the
IOC and its ground truth build the tab the laser mill cut in the same data directory.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from .. import launcher, simctl
from ..config import apply_ca_client_environment, ca_client_environment

__all__ = ["txm_ioc"]


def _recorded_args(pid: int) -> list[str] | None:
    """Options after ``--port N`` on a running IOC's command line, without the links to
    the IOCs it requires (``--ring-prefix P --ring-port N``); None if unreadable."""
    cmd = launcher.command_line(pid)
    if cmd is None or "--port" not in cmd:
        return None
    options = cmd[cmd.index("--port") + 2 :]
    links = {f"--{name}-{what}" for name in simctl.REQUIRES["txm"] for what in ("prefix", "port")}
    kept: list[str] = []
    while options:
        option = options.pop(0)
        if option in links:
            options.pop(0)  # its value
        else:
            kept.append(option)
    return kept


def _add_ca_port(port: int) -> None:
    """Let this process's CA clients search ``port`` too, keeping the ports listed already."""
    listed = os.environ.get("EPICS_CA_ADDR_LIST", "").split()
    ports = [int(a.rsplit(":", 1)[1]) for a in listed if a.startswith("127.0.0.1:")]
    apply_ca_client_environment(ca_client_environment([*ports, port]))


def txm_ioc(ioc_args: list[str], data_dir: Path, port: int | None, prefix_stem: str):
    """Prefixes of a TXM IOC started with ``ioc_args`` and of its ring, and the processes
    started here.

    A TXM IOC recorded by ``multiscope sim start`` is reused when its command line
    has exactly these options (prefixes None: the session's defaults, the recorded
    ring's); otherwise a dedicated one is started on ``port`` (or a free one) under a
    unique prefix beginning with ``prefix_stem``, with a dedicated ring IOC on a free
    port. They are not recorded in the state file, so they never replace the user's;
    the caller stops them by PID.

    Returns
    -------
    prefix, beam_prefix : str or None
    processes : list of simctl.IOCProcess
    """
    record = simctl.status(data_dir).get("txm")
    reusable = port is None and record and record["alive"]
    if reusable and _recorded_args(record["pid"]) == list(ioc_args):
        return None, None, []
    port = port or simctl.free_port()
    prefix = f"{prefix_stem}{uuid.uuid4().hex[:4]}:"
    log_dir = Path(data_dir) / "sim" / "logs"
    processes = [
        simctl.start_ioc("ring", prefix=f"{prefix_stem}SR{uuid.uuid4().hex[:4]}:",
                         port=simctl.free_port(), log_dir=log_dir)
    ]  # fmt: skip
    ring = processes[0]
    try:
        simctl.wait_until_ready(ring)
        processes.append(
            simctl.start_ioc("txm", prefix=prefix, port=port, log_dir=log_dir,
                             extra_args=[*ioc_args, *simctl.link_args("txm", {"ring": ring})])
        )  # fmt: skip
        simctl.wait_until_ready(processes[-1])  # warms its kernels first
    except Exception:
        for process in processes:
            simctl.stop_ioc(process.pid)
        raise
    _add_ca_port(ring.port)
    _add_ca_port(port)
    return prefix, ring.prefix, processes
