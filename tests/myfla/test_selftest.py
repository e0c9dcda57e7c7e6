"""``python -m myfla.selftest``: it passes here, reports a failing check as a FAIL row with exit code 1,
gives ``unittest`` one test per check, and has a gradcheck for every autograd.Function of myfla."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import unittest

import torch

import myfla
from myfla import selftest


def test_selftest_passes_and_exits_zero(capsys):
    threads = torch.get_num_threads()
    try:
        assert selftest.main([]) == 0
    finally:
        torch.set_num_threads(threads)     # main() caps the thread count of the process it runs in
    out = capsys.readouterr().out
    assert f"selftest: {len(selftest.CHECKS)} passed, 0 failed" in out
    assert "FAIL" not in out


def test_a_failing_check_is_a_fail_row_and_exit_code_1(monkeypatch, capsys):
    def off_by_a_lot():
        return 1.0, selftest.FP64_TOL

    def raises():
        raise RuntimeError("boom")

    monkeypatch.setattr(selftest, "CHECKS", [("ops", "too far", off_by_a_lot), ("ops", "crashes", raises)])
    assert selftest.main(["--quiet"]) == 1
    out = capsys.readouterr().out
    assert "too far" in out and "crashes" in out and "RuntimeError: boom" in out
    assert "selftest: 0 passed, 2 failed" in out


def test_selection_that_matches_nothing_is_a_usage_error(capsys):
    assert selftest.main(["-k", "no such check"]) == 2


def test_unittest_entry_has_one_test_per_check():
    suite = unittest.TestLoader().loadTestsFromModule(selftest)
    assert suite.countTestCases() == len(selftest.CHECKS)


def test_every_autograd_function_has_a_gradcheck():
    functions = set()
    for info in pkgutil.walk_packages(myfla.__path__, "myfla.", onerror=lambda name: None):
        if info.name.startswith(("myfla._fla_shim.", "myfla._causal_conv1d_shim.")):
            continue   # the top-level `fla` of myfla.alias' PYTHONPATH shim, not a module of myfla
        try:
            module = importlib.import_module(info.name)
        except ModuleNotFoundError as exc:
            # fla's HF model classes need transformers (absent in the torch-1.13 floor run); the main
            # environment has it and checks their modules
            if (exc.name or "").split(".")[0] != "transformers":
                raise
            continue
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, torch.autograd.Function) and obj.__module__ == info.name):
                functions.add(name)
    missing = sorted(functions - set(selftest.GRADCHECKS))
    assert not missing, f"autograd.Functions without a gradcheck in myfla/selftest.py: {', '.join(missing)}"
    assert set(selftest.GRADCHECKS) <= functions, "selftest names a Function myfla does not define"
