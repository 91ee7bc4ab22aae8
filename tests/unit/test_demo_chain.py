"""``multiscope demo`` runs the demos in chain order and prints one summary."""

import sys
import types

import multiscope.demos as demos
from multiscope.demos import DemoResult, run_demos


def test_all_demos_run_in_chain_order_with_one_summary(monkeypatch, tmp_path, capsys):
    ran = []
    fake = {}
    for name in ("tomo", "demo", "xanes"):  # deliberately not in chain order
        module = types.ModuleType(f"fake_demo_{name}")

        def run(data_dir, _name=name):
            ran.append(_name)
            if _name == "tomo":
                raise RuntimeError("IOC would not start")
            return DemoResult(name=_name, passed=_name != "xanes", elapsed_s=0.0,
                              scores={"score": _name})  # fmt: skip

        module.run = run
        monkeypatch.setitem(sys.modules, module.__name__, module)
        fake[name] = module.__name__
    chain = {n: fake[n] for n in ("demo", "tomo", "xanes")}
    monkeypatch.setattr(demos, "DEMOS", chain)
    results = run_demos(["xanes", "tomo", "demo"], tmp_path)
    assert ran == ["demo", "tomo", "xanes"]
    assert [r.passed for r in results] == [True, False, False]
    assert "IOC would not start" in results[1].details[0]
    printed = capsys.readouterr().out
    assert printed.count("multiscope demo summary") == 1
    assert "[PASS] demo" in printed and "[FAIL] tomo" in printed and "[FAIL] xanes" in printed


def test_the_chain_holds_the_instrument_demos_in_order():
    assert list(demos.DEMOS)[:4] == ["demo", "prep", "tomo", "xanes"]


def _fake_catalog(monkeypatch, runs):
    from multiscope import catalog as catalog_module
    from multiscope.samples import history_from_metadata

    class FakeCatalog:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def sample_history(self, sample_id):
            return history_from_metadata(sample_id, runs)

    opened = classmethod(lambda *args, **kwargs: FakeCatalog())
    monkeypatch.setattr(catalog_module.Catalog, "embedded", opened)


def _chain_run(uid, t, plan, instrument, status="success", **extra):
    start = {"uid": uid, "time": t, "plan_name": plan, "sample_id": demos.CHAIN_SAMPLE_ID,
             "instrument": instrument, **extra}  # fmt: skip
    return uid, {"start": start, "stop": {"exit_status": status}}


def _quiet_demos(monkeypatch, names):
    fake = {}
    for name in names:
        module = types.ModuleType(f"fake_chain_{name}")
        module.run = lambda data_dir, _n=name: DemoResult(name=_n, passed=True, elapsed_s=0.0)
        monkeypatch.setitem(sys.modules, module.__name__, module)
        fake[name] = module.__name__
    monkeypatch.setattr(demos, "DEMOS", fake)


def test_the_chains_sample_is_read_back_and_its_instruments_checked(monkeypatch, tmp_path):
    _quiet_demos(monkeypatch, ["prep", "tomo", "fibsem"])
    cut = _chain_run("a" * 32, 1.0, "cut_tab", "laser", sample={"id": demos.CHAIN_SAMPLE_ID})
    tomo = _chain_run("b" * 32, 2.0, "tomo_scan", "txm")
    section = _chain_run("c" * 32, 3.0, "slice_and_view", "fibsem")
    _fake_catalog(monkeypatch, [section, tomo, cut])
    results = run_demos(["prep", "tomo", "fibsem"], tmp_path)
    assert results[-1].name == "chain" and results[-1].passed, results[-1].scores
    # the PFIB-SEM's run missing, or a run that failed: the chain fails
    _fake_catalog(monkeypatch, [tomo, cut])
    assert not run_demos(["prep", "tomo", "fibsem"], tmp_path)[-1].passed
    broken = _chain_run("d" * 32, 2.5, "tomo_scan", "txm", status="fail")
    _fake_catalog(monkeypatch, [section, tomo, cut, broken])
    assert not run_demos(["prep", "tomo", "fibsem"], tmp_path)[-1].passed
    # one instrument's demo alone has no chain to check
    assert [r.name for r in run_demos(["tomo"], tmp_path)] == ["tomo"]
