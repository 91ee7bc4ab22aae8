"""Is a file lock held by someone else? One probe for the journal and the catalog lease.

A live writer holds an ``flock`` on its file (a run's journal, exclusively; every
process using a catalog server, the lease, shared). Beside the layers: no import of
``multiscope``; the catalog server and the storage callbacks both use it.
"""

from __future__ import annotations

import fcntl

__all__ = ["locked_elsewhere"]


def locked_elsewhere(fd: int) -> bool:
    """True if another open file description holds a lock on ``fd``'s file.

    Probes with a non-blocking exclusive ``flock`` and releases it at once.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False
