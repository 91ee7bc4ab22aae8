"""The simulated storage ring: its own IOC, as at a facility (decision 0009).

The beam current a beamline gates on is served by the accelerator's IOC, not by
the beamline's: when a beamline IOC dies the ring current stays, and a beam dump
leaves every beamline IOC up. Serving the ring on its own process lets tests tell
the two faults apart (a dead device fails the run; a beam dump suspends it).

PVs (prefix e.g. ``SR:``): ``ring:current`` (mA, RO), ``ring:status``
(No Beam/Stored), and the test controls ``ring:current:SP`` (mA), ``ring:dump``
(put 1: current 0) and ``ring:inject`` (put 1: refill to the last fill current),
as :class:`sim_devices.beam.RingCurrent`.

Run::

    python -m sim_devices.ring --prefix SR: --port 5072
"""

from __future__ import annotations

from textwrap import dedent

from caproto.server import PVGroup, SubGroup

from sim_devices.beam import RingCurrent
from sim_devices.server import ioc_argument_parser, run_from_args

__all__ = ["DEFAULT_PORT", "DEFAULT_PREFIX", "FILL_CURRENT_MA", "RingIOC", "main"]

DEFAULT_PREFIX = "SR:"
DEFAULT_PORT = 5072
FILL_CURRENT_MA = 400.0


class RingIOC(PVGroup):
    """Storage-ring current (``ring:current``, ``ring:status``) with dump and refill controls."""

    ring = SubGroup(
        RingCurrent, prefix="ring:", current=FILL_CURRENT_MA, doc="Storage ring current"
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve the ring IOC until SIGTERM."""
    parser = ioc_argument_parser(
        dedent(RingIOC.__doc__ or ""), default_prefix=DEFAULT_PREFIX, default_port=DEFAULT_PORT
    )
    args = parser.parse_args(argv)
    run_from_args(RingIOC(prefix=args.prefix).pvdb, args)


if __name__ == "__main__":
    main()
