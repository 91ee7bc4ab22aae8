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
