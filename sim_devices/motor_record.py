"""The EPICS motor record's arithmetic, apart from the simulated axis that serves it.

Pure functions of the record's fields (no network, unit-tested), as the motor record
documentation defines them (docs/decisions/0024-motor-record-semantics.md):

- user and dial coordinates: ``user = DIR * dial + OFF`` (DIR "Pos" is +1, "Neg" -1);
- soft limits: the dial limits ``DLLM``/``DHLM`` are the record's, the user limits
  ``LLM``/``HLM`` follow them through the calibration (with DIR "Neg" the user high
  limit is the dial low limit's image);
- a limit violation (``LVIO``): a dial target outside ``[DLLM, DHLM]`` does not move
  the axis, unless both limits are 0 (no soft limits) or the target lies between the
  last target and the valid range (a move back towards it is allowed);
- ``MSTA``, the controller status word: bit 0 DIRECTION (last direction positive),
  1 DONE, 2 PLUS_LS, 3 HOMELS, 5 POSITION, 6 SLIP_STALL, 7 HOME, 8 PRESENT,
  9 PROBLEM, 10 MOVING, 11 GAIN_SUPPORT, 12 COMM_ERR, 13 MINUS_LS, 14 HOMED.
"""

from __future__ import annotations

__all__ = [
    "MSTA_DIRECTION",
    "MSTA_DONE",
    "MSTA_HOMED",
    "MSTA_MINUS_LS",
    "MSTA_MOVING",
    "MSTA_PLUS_LS",
    "dial_limits_from_user",
    "direction_sign",
    "limit_violation",
    "status_word",
    "user_limits",
]

MSTA_DIRECTION = 1 << 0
MSTA_DONE = 1 << 1
MSTA_PLUS_LS = 1 << 2
MSTA_MOVING = 1 << 10
MSTA_MINUS_LS = 1 << 13
MSTA_HOMED = 1 << 14


def direction_sign(direction) -> int:
    """+1 for DIR "Pos" (0), -1 for "Neg" (1); accepts the enum string or its index."""
    return -1 if direction in ("Neg", 1) else 1


def user_limits(dial_low: float, dial_high: float, sign: int, offset: float):
    """(LLM, HLM) of the dial limits through ``user = sign * dial + offset``."""
    ends = sorted((sign * dial_low + offset, sign * dial_high + offset))
    return ends[0], ends[1]


def dial_limits_from_user(low: float, high: float, sign: int, offset: float):
    """(DLLM, DHLM) of the user limits: the inverse of :func:`user_limits`."""
    ends = sorted(((low - offset) * sign, (high - offset) * sign))
    return ends[0], ends[1]


def limit_violation(target: float, last_target: float, low: float, high: float) -> bool:
    """True if the record refuses to move to dial ``target`` (it sets LVIO instead).

    All in dial coordinates: ``last_target`` is the previous target (``LDVL``),
    ``low``/``high`` the dial limits. Both 0: no soft limits. A target outside the
    range but nearer to it than the last target is allowed, so an axis left outside
    (its limits changed under it) can be driven back.
    """
    if low == 0.0 and high == 0.0:
        return False
    if (target > high and target < last_target) or (target < low and target > last_target):
        return False
    return target > high or target < low


def status_word(*, positive: bool, done: bool, moving: bool, homed: bool = True) -> int:
    """MSTA of an axis without limit switches or encoder."""
    word = MSTA_DIRECTION if positive else 0
    word |= MSTA_DONE if done else 0
    word |= MSTA_MOVING if moving else 0
    word |= MSTA_HOMED if homed else 0
    return word
