"""One object per instrument for its plans: ``slice_and_view(pfib, ...)``, ``cut_tab(laser, ...)``.

An :class:`InstrumentBundle` holds the instrument's devices as attributes, not as
ophyd components, so their names and data keys stay their own (``sem_image``,
``piece_row_width_um``, ``camera_image``) and a session has each device once. It
reads nothing itself. A subclass names its parts in ``PARTS``.
"""

from __future__ import annotations

from typing import ClassVar

from ophyd import Device

__all__ = ["InstrumentBundle"]


class InstrumentBundle(Device):
    """An instrument's devices, held together for plans (see the module docstring).

    Parameters
    ----------
    prefix : str
        The instrument's PV prefix.
    name : str
    **parts
        Every name of ``PARTS``, the device serving it (exactly those).
    """

    PARTS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, prefix: str = "", *, name: str, **parts):
        missing = [part for part in self.PARTS if part not in parts]
        unknown = sorted(set(parts) - set(self.PARTS))
        if missing or unknown:
            raise TypeError(
                f"{type(self).__name__} needs exactly {self.PARTS}: missing {missing}, "
                f"unknown {unknown}"
            )
        super().__init__(prefix, name=name)
        for part in self.PARTS:
            setattr(self, part, parts[part])

    def wait_for_connection(self, all_signals=False, timeout=2.0):
        """Wait for every part's PVs."""
        for part in self.PARTS:
            getattr(self, part).wait_for_connection(all_signals=all_signals, timeout=timeout)
