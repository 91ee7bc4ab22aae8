"""multiscope: bluesky control of multi-scale battery-electrode imaging."""

import os as _os

__version__ = "0.1.0"

# ophyd chooses its control layer when imported, pyepics first if installed (the
# tests install it as a stock client): name caproto before anything imports ophyd.
_os.environ.setdefault("OPHYD_CONTROL_LAYER", "caproto")
