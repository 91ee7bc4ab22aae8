"""In-process fake devices for plan unit tests (no IOC): readable, movable, triggerable."""

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal, SoftPositioner
from ophyd.sim import SynSignal


class CamSettings(Device):
    acquire_time = Cpt(Signal, value=0.1, kind="config")


class FakeCamera(Device):
    image = Cpt(SynSignal, func=lambda: np.ones((4, 4)), kind="hinted")
    cam = Cpt(CamSettings)

    def trigger(self):
        return self.image.trigger()


class FakeStage(Device):
    x = Cpt(SoftPositioner, limits=(-500, 500), init_pos=0.0)
    theta = Cpt(SoftPositioner, limits=(-720, 720), init_pos=0.0)


class FakeShutter(Signal):
    def set(self, value, **kwargs):
        if value not in ("open", "close"):
            raise ValueError(value)
        return super().set(value, **kwargs)
