# IPython profile for the lab X-ray microscope (whole-cell tomography, scout and zoom):
#     ipython --profile-dir=profiles/profile_xrm
# All logic lives in the installed package; this file only sets up the session.
from multiscope.session import configure_session

configure_session(get_ipython().user_ns, "xrm")  # noqa: F821 (IPython provides get_ipython)
