"""Running the instruments' plans from the bluesky queueserver (``docs/queueserver.md``).

The RE Manager's worker imports :mod:`multiscope.queueserver.startup`, which sets up
one instrument's session in the worker's namespace with
:func:`configure_from_environment`: ``start-re-manager`` passes no arguments to a
startup module, so the instrument and its options come from the environment of the
manager (its worker inherits it):

==============================  ======================================================
``MULTISCOPE_INSTRUMENT``       required: ``demo``, ``txm``, ``fibsem``, ``laser``, ``xrm``
``MULTISCOPE_DATA_DIR``         the data directory (default: the user's; ``README.md``)
``MULTISCOPE_CATALOG_URI``      a facility tiled server (default: the embedded catalog)
``MULTISCOPE_TILED_API_KEY``    its API key
``MULTISCOPE_PREFIX``           the instrument's PV prefix (default: the running
                                simulated IOC's, else the facility prefix)
``MULTISCOPE_BEAM_PREFIX``      the beam-current IOC's PV prefix (TXM)
==============================  ======================================================

One RE Manager runs one instrument (a session's device names, ``cam``, ``shutter``,
repeat across instruments); a facility runs one manager per instrument, each on its
own ZeroMQ ports and Redis key prefix. :data:`USER_GROUP_PERMISSIONS` is the
permissions file to pass as ``--user-group-permissions``.
"""

import os
from collections.abc import Mapping
from pathlib import Path

from ..session import INSTRUMENTS, Session, configure_session

__all__ = ["USER_GROUP_PERMISSIONS", "configure_from_environment"]

#: The user-group permissions shipped for the RE Manager: every public plan and
#: device of the session for the ``primary`` group; names starting with ``_`` never.
USER_GROUP_PERMISSIONS = Path(__file__).with_name("user_group_permissions.yaml")


def configure_from_environment(
    namespace: dict, environ: Mapping[str, str] | None = None
) -> Session:
    """Set up the session named by ``MULTISCOPE_INSTRUMENT`` in ``namespace``.

    Parameters
    ----------
    namespace : dict
        The RE Worker's namespace (the startup module's globals).
    environ : mapping, optional
        The environment to read (default :data:`os.environ`).

    Returns
    -------
    Session

    Raises
    ------
    RuntimeError
        If ``MULTISCOPE_INSTRUMENT`` is not set or names no instrument.
    """
    environ = os.environ if environ is None else environ
    instrument = environ.get("MULTISCOPE_INSTRUMENT", "")
    if instrument not in INSTRUMENTS:
        raise RuntimeError(
            f"MULTISCOPE_INSTRUMENT={instrument!r}: set it, in the environment of "
            f"start-re-manager, to one of {sorted(INSTRUMENTS)}"
        )
    session = configure_session(
        namespace,
        instrument,
        prefix=environ.get("MULTISCOPE_PREFIX") or None,
        beam_prefix=environ.get("MULTISCOPE_BEAM_PREFIX") or None,
        # The worker has no terminal: a progress line per run in the manager's console
        # output, no live table.
        table=False,
    )
    # No drain at the worker's exit: the manager joins the worker within 0.5 s of its
    # exit (a drain took ~1.3 s, and the manager then logs a failed join). Every run
    # is journaled as acquired; one whose last documents were still on their way when
    # the environment closed is completed by `multiscope catalog recover`.
    return session
