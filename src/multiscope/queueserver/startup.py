"""Startup module of the RE Worker: ``--startup-module multiscope.queueserver.startup``.

The worker copies this module's names into its namespace: the session of the
instrument named by ``MULTISCOPE_INSTRUMENT`` (``RE``, ``catalog``, devices, plans;
:func:`multiscope.queueserver.configure_from_environment`). The worker runs its plans
on this ``RE``, so every run goes to the session's catalog.
"""

from multiscope.queueserver import configure_from_environment

configure_from_environment(globals())
