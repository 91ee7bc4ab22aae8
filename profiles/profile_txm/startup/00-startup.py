# IPython profile for the transmission X-ray microscope (TXM):
#     ipython --profile-dir=profiles/profile_txm
# All logic lives in the installed package; this file only sets up the session.
from multiscope.session import configure_session

configure_session(get_ipython().user_ns, "txm")  # noqa: F821 (IPython provides get_ipython)
