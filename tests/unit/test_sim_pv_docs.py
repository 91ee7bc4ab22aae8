"""Every PV of every simulated IOC documents itself (`doc=`), and IOCs bind loopback only."""

import importlib

import pytest
from caproto import ChannelData

from multiscope import config, simctl

IOC_CLASSES = {
    "demo": ("sim_devices.demo", "DemoIOC"),
    "ring": ("sim_devices.ring", "RingIOC"),
    "txm": ("sim_devices.txm", "TXMIOC"),
    "fibsem": ("sim_devices.fibsem", "FibsemIOC"),
    "laser": ("sim_devices.laser", "LaserIOC"),
    "xrm": ("sim_devices.xrm", "XRMIOC"),
}


def test_every_simulated_instrument_is_covered():
    assert set(IOC_CLASSES) == set(simctl.SIM_MODULES)


@pytest.mark.parametrize("name", sorted(IOC_CLASSES))
def test_every_pv_has_a_doc(name):
    module_name, class_name = IOC_CLASSES[name]
    ioc = getattr(importlib.import_module(module_name), class_name)(prefix="DOC:")
    undocumented = []
    for pvname, channel in ioc.pvdb.items():
        doc = (channel.__doc__ or "").strip()
        if not doc or doc == (type(channel).__doc__ or "").strip():
            undocumented.append(pvname)
        fields = getattr(getattr(channel, "field_inst", None), "__dict__", {})
        for field_name, field in fields.items():
            if isinstance(field, ChannelData) and not (field.__doc__ or "").strip():
                undocumented.append(f"{pvname}.{field_name}")
    assert not undocumented, undocumented
    assert len(ioc.pvdb) >= 5  # the ring's current, status and three test controls


def test_server_environment_is_loopback_only():
    env = config.ca_server_environment(5999)
    assert env["EPICS_CAS_INTF_ADDR_LIST"] == "127.0.0.1"
    assert env["EPICS_CAS_BEACON_ADDR_LIST"] == "127.0.0.1"
    assert env["EPICS_CAS_AUTO_BEACON_ADDR_LIST"] == "NO"
    assert env["EPICS_CA_SERVER_PORT"] == env["EPICS_CAS_SERVER_PORT"] == "5999"
    client = config.ca_client_environment([5999, 6001])
    assert client["EPICS_CA_ADDR_LIST"] == "127.0.0.1:5999 127.0.0.1:6001"
    assert client["EPICS_CA_AUTO_ADDR_LIST"] == "NO"
