# IPython profile for the demo instrument: `ipython --profile-dir=profiles/profile_demo`.
# All logic lives in the installed package; this file only sets up the session.
from multiscope.session import configure_session

configure_session(get_ipython().user_ns, "demo")  # noqa: F821 (IPython provides get_ipython)
