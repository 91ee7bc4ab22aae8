# IPython profile for the laser mill (tabs and pillars cut from electrode sheets):
#     ipython --profile-dir=profiles/profile_laser
# All logic lives in the installed package; this file only sets up the session.
from multiscope.session import configure_session

configure_session(get_ipython().user_ns, "laser")  # noqa: F821 (IPython provides get_ipython)
