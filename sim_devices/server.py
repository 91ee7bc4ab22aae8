"""Run a simulated IOC: loopback only, its own port, low latency, clean SIGTERM.

Every instrument IOC in :mod:`sim_devices` ends with the same footer::

    def main(argv=None):
        parser = ioc_argument_parser("Demo instrument IOC", default_prefix="DEMO:",
                                     default_port=5070)
        args = parser.parse_args(argv)
        ioc = DemoIOC(prefix=args.prefix)
        run_ioc(ioc.pvdb, port=args.port)

What :func:`run_ioc` fixes relative to ``caproto.server.run`` (docs/stack-facts.md, caproto IOCs):

- the EPICS server environment comes from
  :func:`multiscope.config.ca_server_environment` and is applied before the
  server context is created;
- ``TCP_NODELAY`` is set on every accepted client socket (Nagle + delayed ACK
  otherwise add ~33 ms to every put-with-completion);
- the TCP port is bound exactly as asked: caproto silently falls back to a
  random port when the port is taken, which would leave clients searching a
  port nobody serves;
- the per-beacon traceback logged when no CA repeater listens is filtered;
- SIGTERM and SIGINT cancel the server, so shutdown hooks (closing HDF5 files)
  run and the process exits with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import socket
from collections.abc import Mapping
from pathlib import Path

from multiscope.compat import StrictPortBinding, set_server_high_load_timeout
from multiscope.config import ca_server_environment

__all__ = [
    "PREFIX_ENV",
    "PORT_ENV",
    "BeaconFailureFilter",
    "apply_server_environment",
    "default_state_file",
    "ioc_argument_parser",
    "run_from_args",
    "run_ioc",
]

PREFIX_ENV = "MULTISCOPE_SIM_PREFIX"
PORT_ENV = "MULTISCOPE_SIM_PORT"

logger = logging.getLogger(__name__)


class BeaconFailureFilter(logging.Filter):
    """Drop caproto's "Failed to send beacon" records (one traceback per beacon)."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        return not str(record.msg).startswith("Failed to send beacon")


def apply_server_environment(port: int) -> dict[str, str]:
    """Set the EPICS server variables for ``port`` in this process and return them.

    caproto reads ``CAPROTO_SERVER_HIGH_LOAD_TIMEOUT_SEC`` once, when
    ``caproto.server.common`` is imported, which has already happened when an
    IOC module defines its PVGroups; the module constant is updated too.
    """
    env = ca_server_environment(port)
    os.environ.update(env)
    set_server_high_load_timeout(float(env["CAPROTO_SERVER_HIGH_LOAD_TIMEOUT_SEC"]))
    return env


def _make_context_class():
    """Build the asyncio server Context subclass (import caproto only when serving)."""
    from caproto.asyncio.server import Context

    class LowLatencyContext(StrictPortBinding, Context):
        """asyncio server context with TCP_NODELAY and a strictly bound port."""

        async def tcp_handler(self, client, addr):
            sock = client.writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return await super().tcp_handler(client, addr)

    return LowLatencyContext


def run_ioc(
    pvdb: Mapping,
    *,
    port: int,
    log_level: str = "WARNING",
    log_pv_names: bool = False,
) -> None:
    """Serve ``pvdb`` on 127.0.0.1:``port`` until SIGTERM or SIGINT.

    Parameters
    ----------
    pvdb : Mapping
        The PV database, usually ``ioc.pvdb`` of a top-level ``PVGroup``.
    port : int
        TCP and UDP port (unique per IOC; see ``ca_server_environment``).
    log_level : str, optional
        Level of the ``caproto`` logger.
    log_pv_names : bool, optional
        Log every PV name at startup.
    """
    env = apply_server_environment(port)
    logging.basicConfig(level=log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    beacon_filter = BeaconFailureFilter()
    logging.getLogger("caproto.ctx").addFilter(beacon_filter)
    for handler in logging.getLogger().handlers:
        handler.addFilter(beacon_filter)
    logging.getLogger("caproto").setLevel(log_level)
    interfaces = env["EPICS_CAS_INTF_ADDR_LIST"].split()
    context_class = _make_context_class()

    async def serve():
        ctx = context_class(pvdb, interfaces)
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        try:
            await ctx.run(log_pv_names=log_pv_names)
        except asyncio.CancelledError:
            logger.info("IOC on port %d stopped by signal", port)

    asyncio.run(serve())


def ioc_argument_parser(
    description: str,
    *,
    default_prefix: str,
    default_port: int,
    environ: Mapping[str, str] | None = None,
) -> argparse.ArgumentParser:
    """The argument parser every simulated IOC shares; add instrument options to it.

    ``--prefix`` and ``--port`` default to ``MULTISCOPE_SIM_PREFIX`` and
    ``MULTISCOPE_SIM_PORT`` when set, else to the instrument's defaults.
    """
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--prefix",
        default=env.get(PREFIX_ENV, default_prefix),
        help=f"PV prefix (env {PREFIX_ENV}; default %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(env.get(PORT_ENV, default_port)),
        help=f"CA server port, TCP and UDP (env {PORT_ENV}; default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="caproto log level (default %(default)s)",
    )
    parser.add_argument("--list-pvs", action="store_true", help="log all PV names at startup")
    return parser


def run_from_args(pvdb: Mapping, args: argparse.Namespace) -> None:
    """Call :func:`run_ioc` with the options parsed by :func:`ioc_argument_parser`."""
    run_ioc(pvdb, port=args.port, log_level=args.log_level, log_pv_names=args.list_pvs)


def default_state_file(kind: str, prefix: str) -> Path:
    """``<data dir>/sim/<kind>-<prefix>.json``: an IOC's state file beside its data."""
    from multiscope import config

    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", prefix.rstrip(":")) or kind
    return config.data_dir() / "sim" / f"{kind}-{safe}.json"
