"""The CA ports of a test process's IOCs, and the channels of IOCs that are gone.

A test process's Channel Access client reads ``EPICS_CA_ADDR_LIST`` once, so every
port an IOC of the process may use is reserved up front (:class:`PortPool`). Two
costs grow with every IOC a long test process starts and stops, and both once
broke the suite late in a run:

- **Ports.** A serial suite starts more IOCs than the pool holds ("all 64 reserved CA
  ports are used"). The port of an IOC that has ended is handed out again, but only at
  a test module's boundary: within a module a killed IOC may be restarted on its port.
- **Searches.** When an IOC ends, caproto's client searches again for every channel it
  had there, forever, and it re-sends *all* unanswered searches, to every address of
  the list, each time a new channel is searched for (``SharedBroadcaster.search``
  sets ``_search_now``; measured: 770 such names after ``test_laser.py``, 1767 after
  four modules). With thousands of stale names and 64 addresses, each ophyd
  signal's first connection became thousands of datagrams, and the lazy signals of
  stock ophyd classes (a 1 s connection timeout) stopped connecting ("searching...").
  :meth:`IOCTracker.forget_ended` cancels the searches of ended IOCs' channels at a
  module's boundary, and :meth:`IOCTracker.stop_searching_ended` after every test: a
  module's tests each start and end IOCs (390 names per TXM session; 1739 stale names
  by the end of ``test_faults.py``), and until then every new channel of the module
  re-sent them all. An IOC started again on a prefix whose searches were cancelled
  (a restart in a later test) has them searched for again.

The process's IOCs are those started with :func:`multiscope.simctl.start_ioc`, which
the session fixture wraps with :meth:`IOCTracker.track` (tests and fixtures call it
through the module, so the wrapper sees them all).
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Iterable

from multiscope import simctl

__all__ = ["IOCTracker", "PortPool", "cancel_searches", "resume_searches"]


class PortPool:
    """The reserved ports, handed out fresh first, then recycled, as ``next(pool)``.

    Parameters
    ----------
    ports : iterable of int
        The ports reserved for the process (all in ``EPICS_CA_ADDR_LIST``).
    """

    def __init__(self, ports: Iterable[int]) -> None:
        self.reserved = tuple(ports)
        self._free = collections.deque(self.reserved)

    def __iter__(self) -> PortPool:
        return self

    def __next__(self) -> int:
        if not self._free:
            raise StopIteration
        return self._free.popleft()

    def recycle(self, port: int) -> None:
        """Hand ``port`` out again (after the fresh ones); only a reserved port."""
        if port in self.reserved and port not in self._free:
            self._free.append(port)

    def __len__(self) -> int:
        """Ports that can still be handed out."""
        return len(self._free)


def _default_context():
    """caproto's shared threading client context (ophyd's caproto layer uses it)."""
    from caproto.threading.pyepics_compat import PV

    if hasattr(PV, "default_context"):
        return PV.default_context()
    return PV._default_context


def cancel_searches(prefixes: Iterable[str]) -> int:
    """Stop searching for the channels under ``prefixes``; return how many were cancelled.

    The PV objects stay in the client's cache (caproto's reconnection looks them up),
    idle: nothing serves those names any more.
    """
    prefixes = tuple(prefixes)
    if not prefixes:
        return 0
    broadcaster = _default_context().broadcaster
    # As SharedBroadcaster.cancel, which tests each entry against a tuple of names
    # (quadratic in the thousands of stale names a long module leaves).
    with broadcaster._search_lock:  # the dict changes in caproto's threads
        stale = [search_id for search_id, item in broadcaster.unanswered_searches.items()
                 if item[0].startswith(prefixes)]  # fmt: skip
        for search_id in stale:
            del broadcaster.unanswered_searches[search_id]
    return len(stale)


def resume_searches(prefix: str) -> int:
    """Search again for the unconnected channels under ``prefix``; return how many.

    For an IOC started again on a prefix whose searches :func:`cancel_searches` ended:
    caproto's client would otherwise never look for those channels again.
    """
    context = _default_context()
    with context.pv_cache_lock:
        keys = [key for key, pv in context.pvs.items()
                if key[0].startswith(prefix) and not pv.circuit_ready.is_set()]  # fmt: skip
    if keys:
        context.reconnect(keys)
    return len(keys)


class IOCTracker:
    """The IOCs a test process started, by port (the last one started on each).

    Parameters
    ----------
    pool : PortPool
        Gets back the port of every IOC that has ended.
    """

    def __init__(self, pool: PortPool) -> None:
        self.pool = pool
        self._by_port: dict[int, simctl.IOCProcess] = {}
        # Kept: a channel may go back to searching some time after its IOC ended.
        self._ended_prefixes: set[str] = set()

    def track(self, start: Callable[..., simctl.IOCProcess]) -> Callable[..., simctl.IOCProcess]:
        """Wrap ``simctl.start_ioc`` so every IOC it starts is recorded."""

        @functools.wraps(start)
        def start_and_track(*args, **kwargs) -> simctl.IOCProcess:
            ioc = start(*args, **kwargs)
            self._by_port[ioc.port] = ioc
            if ioc.prefix in self._ended_prefixes:  # a restart after its searches ended
                self._ended_prefixes.discard(ioc.prefix)
                resume_searches(ioc.prefix)
            return ioc

        return start_and_track

    def stop_searching_ended(self) -> None:
        """Cancel the searches of the channels of every IOC that has ended (after a test).

        Ports are not recycled here: a later test of the module may restart an IOC on
        its port (and prefix), and :meth:`track` then resumes its searches.
        """
        ended = {ioc.prefix for ioc in self._by_port.values() if not simctl.is_alive(ioc)}
        self._ended_prefixes |= ended
        cancel_searches(self._ended_prefixes)

    def forget_ended(self) -> list[simctl.IOCProcess]:
        """Cancel the searches of ended IOCs' channels, recycle their ports; return them.

        Call it only where no ended IOC will be restarted on its port (between modules).
        """
        ended = [ioc for ioc in self._by_port.values() if not simctl.is_alive(ioc)]
        for ioc in ended:
            del self._by_port[ioc.port]
            self.pool.recycle(ioc.port)
        self._ended_prefixes |= {ioc.prefix for ioc in ended}
        self._ended_prefixes -= {ioc.prefix for ioc in self._by_port.values()}  # restarted
        cancel_searches(self._ended_prefixes)
        return ended
