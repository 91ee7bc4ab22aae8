"""The simulated TXM IOC a demo needs: reuse the user's if it matches, else a dedicated one."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from .. import simctl
from ..config import apply_ca_client_environment, ca_client_environment

__all__ = ["txm_ioc"]


def _recorded_args(pid: int) -> list[str] | None:
    """Options after ``--port N`` on a running IOC's command line (None if unreadable)."""
    try:
        parts = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    cmd = [p.decode(errors="replace") for p in parts if p]
    if "--port" not in cmd:
        return None
    return cmd[cmd.index("--port") + 2 :]


def _add_ca_port(port: int) -> None:
    """Let this process's CA clients search ``port`` too, keeping the ports listed already."""
    listed = os.environ.get("EPICS_CA_ADDR_LIST", "").split()
    ports = [int(a.rsplit(":", 1)[1]) for a in listed if a.startswith("127.0.0.1:")]
    apply_ca_client_environment(ca_client_environment([*ports, port]))


def txm_ioc(ioc_args: list[str], data_dir: Path, port: int | None, prefix_stem: str):
    """Prefix of a TXM IOC started with ``ioc_args``, and the process if started here.

    A TXM IOC recorded by ``multiscope sim start`` is reused when its command line
    has exactly these options (prefix None: the session's default); otherwise a
    dedicated one is started on ``port`` (or a free one) under a unique prefix
    beginning with ``prefix_stem``. It is not recorded in the state file, so it
    never replaces the user's; the caller stops it by PID.
    """
    record = simctl.status(data_dir).get("txm")
    reusable = port is None and record and record["alive"]
    if reusable and _recorded_args(record["pid"]) == list(ioc_args):
        return None, None
    port = port or simctl.free_port()
    prefix = f"{prefix_stem}{uuid.uuid4().hex[:4]}:"
    ioc = simctl.start_ioc(
        "txm",
        prefix=prefix,
        port=port,
        log_dir=Path(data_dir) / "sim" / "logs",
        extra_args=list(ioc_args),
    )
    try:
        simctl.wait_until_ready(ioc, timeout=60.0)  # builds the phantom first (~2 s)
    except Exception:
        simctl.stop_ioc(ioc.pid)
        raise
    _add_ca_port(port)
    return prefix, ioc
