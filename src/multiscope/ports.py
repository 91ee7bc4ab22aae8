"""Loopback ports for servers this package starts (simulated IOCs, tiled servers).

A port is chosen *below* the kernel's ephemeral range. A port the kernel handed
out with ``bind(("127.0.0.1", 0))`` lies inside that range, and the kernel may
give the same number to any outgoing connection (a Channel Access client, an
HTTP request) between the moment it was chosen and the moment a server binds it,
or binds it again after a restart: the server then fails with ``EADDRINUSE``.
That happened in CI, to a port reserved at the start of a test session and bound
twenty minutes later. Ports below the range are only ever taken by a server that
asks for that number.

Only the standard library is imported.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["ephemeral_range", "free_port", "port_is_free"]

# The lowest port chosen: above the registered ports of common services.
LOWEST_PORT = 20000
# Where the kernel does not say (no /proc), the union of Linux's (32768-60999)
# and the IANA / BSD / macOS (49152-65535) ephemeral ranges.
_ASSUMED_EPHEMERAL = (32768, 65535)
_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_ATTEMPTS = 200
_random = random.SystemRandom()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range ``(low, high)``, inclusive."""
    try:
        low, high = (int(x) for x in _RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return _ASSUMED_EPHEMERAL
    return low, high


def port_is_free(port: int) -> bool:
    """True when both TCP and UDP ``port`` can be bound on 127.0.0.1 now."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            if kind == socket.SOCK_STREAM:
                # As the IOC's server does; otherwise a just-stopped IOC's TIME_WAIT
                # connections make its port look taken for a minute.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port(exclude: frozenset[int] | set[int] = frozenset()) -> int:
    """A port free now for TCP and UDP on 127.0.0.1, outside the ephemeral range.

    Parameters
    ----------
    exclude : set of int
        Ports not to return (e.g. ones already chosen but not yet bound).

    Returns
    -------
    int

    Raises
    ------
    RuntimeError
        If no free port was found below the ephemeral range.
    """
    low, high = ephemeral_range()
    # An unusual kernel setting may leave no room below the range: take the room above.
    below, above = range(LOWEST_PORT, low), range(high + 1, 65536)
    candidates = below if len(below) >= 1000 or len(below) >= len(above) else above
    if not candidates:
        raise RuntimeError(f"the ephemeral range {low}-{high} leaves no port to choose")
    for _ in range(_ATTEMPTS):
        port = _random.choice(candidates)
        if port not in exclude and port_is_free(port):
            return port
    raise RuntimeError(
        f"no free loopback port in {candidates.start}-{candidates.stop - 1} after {_ATTEMPTS} tries"
    )
