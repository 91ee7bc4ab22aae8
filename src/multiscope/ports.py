"""Loopback ports for servers this package starts (simulated IOCs, tiled servers).

A port is chosen *below* the kernel's ephemeral range. A port the kernel handed
out with ``bind(("127.0.0.1", 0))`` lies inside that range, and the kernel may
give the same number to any outgoing connection (a Channel Access client, an
HTTP request) between the moment it was chosen and the moment a server binds it,
or binds it again after a restart: the server then fails with ``EADDRINUSE``.
That happened in CI, to a port reserved at the start of a test session and bound
twenty minutes later. Ports below the range are only ever taken by a server that
asks for that number.

Processes that start servers side by side (pytest-xdist workers, each starting
IOCs and catalog servers) could still pick the same "free now" port before
either binds it. ``MULTISCOPE_PORT_RANGE=LOW-HIGH`` (inclusive) confines every
port chosen here to that range, and the processes started with it inherit it:
given disjoint ranges (:func:`split_range`; ``tests/conftest.py`` gives each
worker one), two such processes can never choose the same port.

Only the standard library is imported.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

__all__ = [
    "PORT_RANGE_ENV",
    "allowed_range",
    "ephemeral_range",
    "free_port",
    "parse_range",
    "port_is_free",
    "range_permits",
    "split_range",
]

PORT_RANGE_ENV = "MULTISCOPE_PORT_RANGE"

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


def parse_range(text: str) -> range:
    """The ports of ``LOW-HIGH`` (inclusive), as ``MULTISCOPE_PORT_RANGE`` gives them.

    Raises
    ------
    ValueError
        If ``text`` is not ``LOW-HIGH`` with ``1024 <= LOW <= HIGH <= 65535``.
    """
    try:
        low, high = (int(x) for x in text.split("-"))
    except ValueError:
        raise ValueError(
            f"{PORT_RANGE_ENV}={text!r}: expected LOW-HIGH, e.g. 20000-20999"
        ) from None
    if not 1024 <= low <= high <= 65535:
        raise ValueError(f"{PORT_RANGE_ENV}={text!r}: expected 1024 <= LOW <= HIGH <= 65535")
    return range(low, high + 1)


def allowed_range() -> range:
    """The ports :func:`free_port` chooses from.

    ``MULTISCOPE_PORT_RANGE`` if set; otherwise the ports from :data:`LOWEST_PORT`
    up to the kernel's ephemeral range (or, if an unusual kernel setting leaves
    fewer than 1000 there, the larger room above it).

    Raises
    ------
    ValueError
        If ``MULTISCOPE_PORT_RANGE`` is not ``LOW-HIGH`` within 1024-65535.
    RuntimeError
        If the ephemeral range leaves no port to choose.
    """
    given = os.environ.get(PORT_RANGE_ENV)
    if given:
        return parse_range(given)
    low, high = ephemeral_range()
    below, above = range(LOWEST_PORT, low), range(high + 1, 65536)
    candidates = below if len(below) >= 1000 or len(below) >= len(above) else above
    if not candidates:
        raise RuntimeError(f"the ephemeral range {low}-{high} leaves no port to choose")
    return candidates


def range_permits(port: int) -> bool:
    """False only if ``MULTISCOPE_PORT_RANGE`` is set and ``port`` lies outside it.

    A fixed, well-known port (a simulated IOC's default, 5070-5075) is taken
    unless a range confines this process: there, another process with another
    range could find the same fixed port free at the same moment.
    """
    given = os.environ.get(PORT_RANGE_ENV)
    return not given or port in parse_range(given)


def split_range(ports: range, index: int, count: int) -> range:
    """Part ``index`` of ``count`` disjoint, equal parts of ``ports``.

    Parameters
    ----------
    ports : range
        The range to split (e.g. :func:`allowed_range`).
    index, count : int
        Which part (``0 <= index < count``) of how many.

    Returns
    -------
    range

    Raises
    ------
    ValueError
        If ``index`` is out of bounds or the parts would hold fewer than 100 ports
        (a test session reserves 64 Channel Access ports up front).
    """
    if not 0 <= index < count:
        raise ValueError(f"part {index} of {count} does not exist")
    size = len(ports) // count
    if size < 100:
        raise ValueError(f"{len(ports)} ports make parts of {size} for {count} processes")
    start = ports.start + index * size
    return range(start, start + size)


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
    """A port free now for TCP and UDP on 127.0.0.1, in :func:`allowed_range`.

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
        If no free port was found in the range.
    """
    candidates = allowed_range()
    for _ in range(_ATTEMPTS):
        port = _random.choice(candidates)
        if port not in exclude and port_is_free(port):
            return port
    raise RuntimeError(
        f"no free loopback port in {candidates.start}-{candidates.stop - 1} after {_ATTEMPTS} tries"
    )
