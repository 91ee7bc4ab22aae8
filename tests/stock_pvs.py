"""The PVs ophyd's stock device classes name, and which of them an IOC does not serve.

Importable from every test directory (``tests/conftest.py`` puts ``tests/`` on
``sys.path``): ``from stock_pvs import device_pvs, unserved``. :func:`device_pvs`
walks a device class's components without connecting anything; :func:`unserved`
searches for many PVs at once (one caproto client context, every search in flight
together) and waits until they are all connected or the limit passes.

As a script, it lists the PVs of the stock detector of
``tests/integration/test_stock_areadetector.py`` that a simulated camera does not
serve (it starts the IOC)::

    PYTHONPATH=$PWD/src:$PWD python3 tests/stock_pvs.py demo ""
    PYTHONPATH=$PWD/src:$PWD python3 tests/stock_pvs.py fibsem SEM: --time-scale 0.002
"""

from __future__ import annotations

import threading

__all__ = ["device_pvs", "unserved"]


def _signal_pvs(cls, prefix: str, suffix: str, kwargs) -> list[str]:
    from ophyd.areadetector.base import EpicsSignalWithRBV

    if issubclass(cls, EpicsSignalWithRBV):
        return [prefix + suffix, prefix + suffix + "_RBV"]
    names = [prefix + suffix]
    if kwargs.get("write_pv"):
        names.append(prefix + kwargs["write_pv"])
    return names


def device_pvs(cls, prefix: str) -> list[str]:
    """The PV names of every EPICS signal of device class ``cls`` under ``prefix``.

    ``Component``, ``DynamicDeviceComponent`` and nested devices are followed;
    ``FormattedComponent`` (its PV depends on the instance) and signals without a
    suffix are left out. ``write_pv`` is taken as a suffix, as ophyd's components do.
    """
    from ophyd import Device
    from ophyd.device import DynamicDeviceComponent, FormattedComponent
    from ophyd.signal import EpicsSignalBase

    names: list[str] = []
    for component in cls._sig_attrs.values():
        if isinstance(component, DynamicDeviceComponent):
            for sub_cls, suffix, kwargs in component.defn.values():
                if issubclass(sub_cls, Device):
                    names += device_pvs(sub_cls, prefix + (suffix or ""))
                else:
                    names += _signal_pvs(sub_cls, prefix, suffix, kwargs)
            continue
        if isinstance(component, FormattedComponent) or component.suffix is None:
            continue
        if issubclass(component.cls, Device):
            names += device_pvs(component.cls, prefix + component.suffix)
        elif issubclass(component.cls, EpicsSignalBase):
            names += _signal_pvs(component.cls, prefix, component.suffix, component.kwargs)
    return list(dict.fromkeys(names))


def unserved(names: list[str], timeout: float, rounds: int = 3) -> list[str]:
    """The PVs of ``names`` not connected within ``timeout`` s (all searched at once).

    The limit is split into ``rounds``, each a fresh client context searching for
    those still missing: caproto's threading client opens a circuit inside its search
    thread with a 2 s limit, and when an IOC answered later (a loaded machine) the
    exception ended that thread, leaving every PV still searching there for ever.
    """
    missing = list(dict.fromkeys(names))
    for _ in range(rounds):
        missing = _unconnected(missing, timeout / rounds)
        if not missing:
            break
    return sorted(missing)


def _unconnected(names: list[str], timeout: float) -> list[str]:
    from caproto.threading.client import Context

    connected: set[str] = set()
    condition = threading.Condition()

    def on_state(pv, state):
        with condition:
            if state == "connected":
                connected.add(pv.name)
            condition.notify_all()

    context = Context()
    try:
        pvs = context.get_pvs(*names, connection_state_callback=on_state, timeout=timeout)
        with condition:
            condition.wait_for(lambda: len(connected) == len(names), timeout=timeout)
        return [pv.name for pv in pvs if not pv.connected]
    finally:
        context.disconnect()


def _main(argv: list[str]) -> None:
    import sys
    import tempfile
    import uuid
    from pathlib import Path

    from multiscope import config, simctl

    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here / "integration"), str(here)]
    from test_stock_areadetector import _stock_detector_class

    instrument, detector, args = argv[0], argv[1], argv[2:]
    port, prefix = simctl.free_port(), f"U{uuid.uuid4().hex[:6]}:"
    config.apply_ca_client_environment(config.ca_client_environment([port]))
    process = simctl.start_ioc(instrument, prefix=prefix, port=port,
                               log_dir=tempfile.mkdtemp(), extra_args=args)  # fmt: skip
    try:
        simctl.wait_until_ready(process, timeout=120)
        names = device_pvs(_stock_detector_class(), prefix + detector)
        missing = unserved(names, timeout=15)
        print(f"{len(names)} PVs; {len(missing)} not served")
        for name in missing:
            print(name[len(prefix) :])
    finally:
        simctl.stop_ioc(process.pid)


if __name__ == "__main__":
    import sys

    _main(sys.argv[1:])
