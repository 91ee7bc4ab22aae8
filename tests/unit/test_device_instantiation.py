"""Every instrument's devices build in fake mode (no IOC) and follow the bluesky protocols.

Like dodal's device-instantiation test: each factory of each instrument module
is inspected for the class it returns, that class is built with
``ophyd.sim.make_fake_device`` (every EPICS signal swapped for a fake), and the
result must be readable, configurable and, where it moves or triggers, movable,
stageable and triggerable, with ``read()`` keys equal to ``describe()`` keys.
"""

import importlib
import inspect
import typing

import pytest
from bluesky.protocols import Configurable, Movable, Readable, Stageable, Triggerable
from ophyd import Device, PositionerBase
from ophyd.areadetector import DetectorBase
from ophyd.sim import make_fake_device

from multiscope.session import INSTRUMENTS


def _factories():
    for spec in INSTRUMENTS.values():
        module = importlib.import_module(spec.devices_module)
        for name in module.__all__:
            factory = getattr(module, name)
            if name == "devices" or not inspect.isfunction(factory):
                continue
            yield pytest.param(spec.name, name, factory, id=f"{spec.name}.{name}")


def _returned_class(factory):
    hints = typing.get_type_hints(factory)
    cls = hints.get("return")
    assert inspect.isclass(cls) and issubclass(cls, Device), (
        f"factory {factory.__name__} must annotate the ophyd Device class it returns"
    )
    return cls


@pytest.mark.parametrize(("instrument", "name", "factory"), list(_factories()))
def test_factory_builds_fake_device_with_protocols(instrument, name, factory, monkeypatch):
    cls = _returned_class(factory)
    default_prefix = inspect.signature(factory).parameters["prefix"].default
    assert isinstance(default_prefix, str) and default_prefix, "factories take a prefix"
    # The factory itself builds the device (its prefix and arguments), from the fake class.
    module = inspect.getmodule(factory)
    assert getattr(module, cls.__name__) is cls, "factories build classes named in their module"
    monkeypatch.setattr(module, cls.__name__, make_fake_device(cls))
    fake = factory()
    assert fake.name == name
    assert fake.prefix.startswith(default_prefix)
    assert isinstance(fake, Readable)
    assert isinstance(fake, Configurable)
    description = fake.describe()
    reading = fake.read()
    # Frames referenced by stream_datum documents are described but never read as values.
    streamed = {key for key, info in description.items() if info.get("external") == "STREAM:"}
    assert set(reading) == set(description) - streamed
    for key, info in description.items():
        assert {"source", "dtype", "shape"} <= set(info), key
    configuration = fake.read_configuration()
    assert set(configuration) == set(fake.describe_configuration())
    if isinstance(fake, PositionerBase):
        assert isinstance(fake, Movable)
    if isinstance(fake, DetectorBase):
        assert isinstance(fake, Triggerable) and isinstance(fake, Stageable)


@pytest.mark.parametrize("instrument", sorted(INSTRUMENTS))
def test_devices_function_names_every_device(instrument):
    module = importlib.import_module(INSTRUMENTS[instrument].devices_module)
    factories = [
        n for n in module.__all__ if n != "devices" and inspect.isfunction(getattr(module, n))
    ]
    assert factories, "an instrument module exposes one factory per device"
    signature = inspect.signature(module.devices)
    assert "prefix" in signature.parameters
