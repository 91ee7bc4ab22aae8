# IPython profile for the plasma FIB-SEM with EDS and SIMS (slice and view):
#     ipython --profile-dir=profiles/profile_fibsem
# All logic lives in the installed package; this file only sets up the session.
from multiscope.session import configure_session

configure_session(get_ipython().user_ns, "fibsem")  # noqa: F821 (IPython provides get_ipython)
