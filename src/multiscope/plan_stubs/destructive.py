"""Destructive steps (a milling cut, a laser cut, a deposition): never replayed (decision 0016).

Every instrument that destroys material shares this wrapper; the instrument numbers
its cuts and refuses a repeated number, the RunEngine never rewinds into one.
"""

from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.utils import plan

__all__ = ["not_replayed"]


@plan
def not_replayed(destructive):
    """Run ``destructive`` (a plan) so that the RunEngine never replays it.

    A checkpoint before it; while it runs the RunEngine keeps no messages to replay
    (``rewindable`` off), so a pause (one Ctrl-C or two) lets the instrument finish
    the process and the resumed run goes on after it; a checkpoint after it.
    """
    yield from bps.checkpoint()
    yield from bpp.rewindable_wrapper(destructive, False)
    yield from bps.checkpoint()
