"""docs/laser.md's table of the simulated laser mill's PVs is what the IOC serves."""

from pathlib import Path

from pv_docs import documented_pvs

from sim_devices.laser import LaserIOC

DOCS = Path(__file__).resolve().parents[2] / "docs" / "laser.md"


def test_the_documented_pvs_are_the_served_ones():
    documented = set(documented_pvs(DOCS, "## PVs of the simulated laser mill IOC", end="\n### "))
    served = {name.removeprefix("DOC:") for name in LaserIOC(prefix="DOC:").pvdb}
    records = {name for name in served if "." not in name}
    assert documented == records
