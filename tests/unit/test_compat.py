"""multiscope.compat: the pinned library versions, and the private names its shims use.

Fails loudly, naming ``src/multiscope/compat.py`` and the pin, when an installed
ophyd, bluesky or caproto leaves the range pinned in ``pyproject.toml`` or when a
private name a shim relies on is gone (decision 0013).
"""

from __future__ import annotations

import importlib
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from multiscope import compat

ROOT = Path(__file__).resolve().parents[2]
COMPAT_FILE = "src/multiscope/compat.py"
LIBRARIES = ("ophyd", "bluesky", "caproto", "fastapi")


def _pins() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = (Requirement(line) for line in project["dependencies"])
    return {req.name: req for req in requirements if req.name in LIBRARIES}


@pytest.mark.parametrize("library", LIBRARIES)
def test_installed_version_is_the_pinned_one(library):
    pin = _pins().get(library)
    assert pin is not None, f"{library} is not pinned in pyproject.toml; {COMPAT_FILE} needs a pin"
    assert any(spec.operator in ("<", "<=", "==", "~=") for spec in pin.specifier), (
        f"{pin} in pyproject.toml has no upper bound: a new {library} would reach the "
        f"private APIs in {COMPAT_FILE} unchecked"
    )
    installed = Version(version(library))
    assert pin.specifier.contains(installed, prereleases=True), (
        f"{COMPAT_FILE} was checked against {pin} (pyproject.toml) but {library} "
        f"{installed} is installed: re-read every PRIVATE_APIS entry for {library} in "
        f"{COMPAT_FILE} against {library} {installed}, fix the shims, then move the pin"
    )


def test_every_private_api_belongs_to_a_pinned_library():
    assert {api.library for api in compat.PRIVATE_APIS} <= set(_pins())


# -- probes: an instance of each owner whose private names exist only on instances ------


def _device():
    from ophyd import Device

    return Device(name="probe")


class _TwoAxes:
    """A pseudo positioner over two soft axes, whose moves command only ``a``."""

    @staticmethod
    def build():
        from ophyd import Component as Cpt
        from ophyd import PseudoPositioner, PseudoSingle, SoftPositioner
        from ophyd.pseudopos import pseudo_position_argument, real_position_argument

        class TwoAxes(compat.SubsetConcurrentMove, PseudoPositioner):
            pseudo = Cpt(PseudoSingle, limits=(-10, 10))
            a = Cpt(SoftPositioner, init_pos=0.0)
            b = Cpt(SoftPositioner, init_pos=0.0)

            @pseudo_position_argument
            def forward(self, pseudo_pos):
                return self.RealPosition(a=pseudo_pos.pseudo, b=pseudo_pos.pseudo)

            @real_position_argument
            def inverse(self, real_pos):
                return self.PseudoPosition(pseudo=real_pos.a)

            def commanded_moves(self, real_pos):
                return [(self.a, real_pos.a)]

        return TwoAxes(name="two_axes")


def _suspender():
    from bluesky.suspenders import SuspendFloor
    from ophyd import Signal

    return SuspendFloor(Signal(name="probe", value=1.0), 0.5)


def _run_engine():
    from bluesky import RunEngine

    return RunEngine({}, context_managers=[])


def _ca_client_context():
    from caproto.threading.pyepics_compat import PV

    return PV.default_context() if hasattr(PV, "default_context") else PV._default_context


def _epics_signal():
    from ophyd.signal import EpicsSignalRO

    return EpicsSignalRO("PROBE:NOTHING", name="probe")


PROBES = {
    "ophyd.signal.EpicsSignalBase": _epics_signal,
    "caproto.threading.client.Context": _ca_client_context,
    "caproto.threading.client.SharedBroadcaster": lambda: _ca_client_context().broadcaster,
    "ophyd.device.Device": _device,
    "ophyd.pseudopos.PseudoPositioner": _TwoAxes.build,
    "bluesky.suspenders.SuspenderBase": _suspender,
    "bluesky.run_engine.RunEngine": _run_engine,
}


def _owner(path: str):
    """The module or class named by dotted ``path``."""
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError:
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("api", compat.PRIVATE_APIS, ids=lambda a: f"{a.owner}.{a.name}")
def test_private_api_still_exists(api):
    owner = _owner(api.owner)
    if api.on_instance:
        assert api.owner in PROBES, f"add a probe instance of {api.owner} to this test"
        owner = PROBES[api.owner]()
        assert isinstance(owner, _owner(api.owner))
    assert hasattr(owner, api.name), (
        f"{api.library} {version(api.library)} has no {api.owner}.{api.name}, which "
        f"{COMPAT_FILE} ({api.shim}) relies on: rewrite that shim for this {api.library} "
        f"and the pin in pyproject.toml"
    )


def test_subset_concurrent_move_leaves_the_other_axes_alone():
    axes = _TwoAxes.build()
    status = axes.move(3.0, wait=True, timeout=5)
    assert status.success
    assert axes.a.position == 3.0
    assert axes.b.position == 0.0  # forward gave it 3.0; the move did not command it


def test_staging_shims_follow_ophyd():
    device = _device()
    assert not compat.is_staged(device)
    device.stage()
    assert compat.is_staged(device)
    compat.forget_staging(device)
    assert not compat.is_staged(device)
    device.stage()  # staging again works: ophyd saw an unstaged device
    assert compat.is_staged(device)


# Private names (a dotted library path with an underscore part, caproto's internal
# server module, the specific hooks and attributes of PRIVATE_APIS, and the ophyd
# attributes with a public twin: real_positioners, parent) anywhere but in compat.py.
_PRIVATE_MODULE = re.compile(
    r"\b(?:ophyd|bluesky|caproto|event_model|fastapi)(?:\.\w+)*\._[a-z]\w*"
)
_PRIVATE_NAMES = re.compile(
    r"\._(?:staged|original_vals|concurrent_move|real_waiting|real_finished|sig|should_suspend"
    r"|should_resume|get_justification|bind_tcp_sockets_with_consistent_port_number|real|parent)\b"
    r"|\bRE\._\w+|\bHIGH_LOAD_TIMEOUT\b|\bfastapi\.dependencies\b|\b_create_bound_tcp_socket\b|\bcaproto\.server\.server\b"
)


def test_private_library_api_is_used_only_in_compat():
    offenders = []
    for path in sorted([*ROOT.glob("src/multiscope/**/*.py"), *ROOT.glob("sim_devices/**/*.py")]):
        if path.relative_to(ROOT).as_posix() == COMPAT_FILE:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if _PRIVATE_MODULE.search(line) or _PRIVATE_NAMES.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, f"private library APIs outside {COMPAT_FILE}:\n" + "\n".join(offenders)


def test_the_event_table_wrapper_takes_what_tiled_takes():
    # order_event_tables_by_seq_num re-creates tiled's create_appendable_table call with
    # one parameter more: a tiled that adds or renames one must be re-read.
    import inspect

    from tiled.client.container import Container

    compat.order_event_tables_by_seq_num()
    wrapper = Container.create_appendable_table
    assert wrapper._orders_by_seq_num
    tiled_signature = inspect.signature(wrapper.__wrapped__)
    assert inspect.signature(wrapper, follow_wrapped=False) == tiled_signature


def test_stream_closes_are_skipped_only_for_a_context_serving_no_streams():
    import httpx
    from tiled.client.base import BaseClient

    class Context:
        def __init__(self):
            self.sent = []
            self.http_client = self

        def delete(self, url):
            self.sent.append(url)
            return httpx.Response(200, request=httpx.Request("DELETE", url))

    class Node:
        uri = "http://127.0.0.1:1/api/v1/metadata/raw/run1"

        def __init__(self, context):
            self.context = context

    quiet, facility = Context(), Context()
    compat.serves_no_streams(quiet)
    compat.serves_no_streams(quiet)  # idempotent: wrapped once
    assert BaseClient.close_stream._skips_unstreamed
    assert BaseClient.close_stream.__wrapped__.__qualname__ == "BaseClient.close_stream"
    BaseClient.close_stream(Node(quiet))
    BaseClient.close_stream(Node(facility))
    assert quiet.sent == []
    assert facility.sent == ["http://127.0.0.1:1/api/v1/stream/close/raw/run1"]


def test_allow_slow_reads_only_raises_the_read_timeout():
    from ophyd.signal import EpicsSignalRO, Signal

    default = EpicsSignalRO("PROBE:A", name="a")  # ophyd's 2 s
    longer = EpicsSignalRO("PROBE:B", name="b", timeout=9.0)
    forever = EpicsSignalRO("PROBE:C", name="c", timeout=None)
    compat.allow_slow_reads([default, longer, forever, Signal(name="soft")], 5.0)
    assert (default.timeout, longer.timeout, forever.timeout) == (5.0, 9.0, None)


def test_overridden_dependencies_are_analysed_once_and_still_resolved(monkeypatch):
    # FastAPI builds an app-with-overrides' dependencies again at every request (each
    # build inspects the callable's signature); wrapped, the later requests build none,
    # and every dependency still resolves, the override included, per request.
    import asyncio

    import httpx
    from fastapi import Depends, FastAPI
    from fastapi.dependencies import utils

    def settings():
        return "default"

    def user(token: str = "anonymous", config: str = Depends(settings)):
        return f"{token}@{config}"

    app = FastAPI()

    @app.get("/who")
    def who(name: str = Depends(user)):
        return {"name": name}

    app.dependency_overrides[settings] = lambda: "overridden"
    # FastAPI's own get_dependant for this test, and back as it was after it.
    build = utils.get_dependant
    monkeypatch.setattr(utils, "get_dependant", getattr(build, "__wrapped__", build))
    inspected = []
    signature = utils.get_typed_signature
    monkeypatch.setattr(utils, "get_typed_signature",
                        lambda call: inspected.append(call) or signature(call))  # fmt: skip
    transport = httpx.ASGITransport(app=app)

    def ask(token):
        async def get():
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                return (await client.get("/who", params={"token": token})).json()

        return asyncio.run(get())

    assert ask("ann") == {"name": "ann@overridden"}
    unwrapped = len(inspected)
    assert ask("bob") == {"name": "bob@overridden"}
    assert len(inspected) == 2 * unwrapped > 0  # FastAPI alone: every request again
    compat.analyse_overridden_dependencies_once()
    compat.analyse_overridden_dependencies_once()  # idempotent
    assert utils.get_dependant._analysed_once
    assert ask("cy") == {"name": "cy@overridden"}  # built once more, kept
    kept = len(inspected)
    assert ask("dee") == {"name": "dee@overridden"}
    assert ask("eve") == {"name": "eve@overridden"}
    assert len(inspected) == kept  # analysed once: nothing built again
