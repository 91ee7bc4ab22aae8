"""Whether a launcher (``multiscope.launcher``) listens on a socket, for the tests."""

from __future__ import annotations

import socket
from pathlib import Path

__all__ = ["accepts"]


def accepts(path: Path) -> bool:
    """A launcher listens on ``path`` (a dead one's socket file refuses)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
