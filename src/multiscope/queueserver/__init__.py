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

In the worker, :func:`configure_from_environment` also gives plan parameters of the
project's types annotations the manager validates
(:func:`~multiscope.queueserver.annotations.annotate_project_types`), makes
``cut_number`` a required parameter of the plans that cut
(:func:`~multiscope.queueserver.destructive.require_cut_numbers`), and makes the
environment's close wait for the session's close (:func:`close_with_environment`):
live analysis and storage finish before the worker exits (decision 0030).
"""

import logging
import multiprocessing
import os
from collections.abc import Mapping
from pathlib import Path

from ..session import INSTRUMENTS, Session, configure_session
from .annotations import annotate_project_types
from .destructive import require_cut_numbers

__all__ = ["USER_GROUP_PERMISSIONS", "close_with_environment", "configure_from_environment"]

logger = logging.getLogger(__name__)

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
    # A restarted item must not cut again: queued cuts name their cut number.
    require_cut_numbers(namespace)
    # The manager drops annotations naming our classes: give it ones it validates.
    annotate_project_types(namespace)
    # Runs still on their way to the catalog are stored before the worker exits.
    close_with_environment(session)
    return session


def close_with_environment(session: Session, process=None) -> bool:
    """Make the RE Worker's environment close wait for ``session.close()``.

    The worker process, asked to close its environment, leaves its plan loop and
    runs its shutdown code: it reports the state ``closing``, waits for the
    manager's confirmation, and exits; the manager joins it within 0.5 s. Nothing in
    the queueserver 0.0.25 API runs user code on close, so the shutdown method of the
    worker process (``RunEngineWorker._worker_shutdown_code``, private; the pin
    ``bluesky-queueserver==0.0.25`` and ``tests/unit/test_queueserver_plans.py`` keep
    it checked) is wrapped on this process's instance: ``session.close()`` (live
    analysis, then storage: the catalog's writer drained) runs first, while the
    manager waits for ``closing`` (it has no time limit there), so the runs are in the
    catalog before the environment reports closed. A failing close is logged; the
    worker closes all the same (the journal keeps what storage did not take).

    Parameters
    ----------
    session : Session
    process : multiprocessing.Process, optional
        The worker process (default: the current process).

    Returns
    -------
    bool
        False outside an RE Worker (nothing wrapped).
    """
    from bluesky_queueserver.manager.worker import RunEngineWorker

    process = multiprocessing.current_process() if process is None else process
    if not isinstance(process, RunEngineWorker):
        return False
    shutdown = process._worker_shutdown_code

    def close_session_then_shut_down():
        try:
            session.close()
        except Exception:
            logger.exception("closing the session on environment close failed")
        finally:
            shutdown()

    process._worker_shutdown_code = close_session_then_shut_down
    return True
