"""Shared fixtures: the fetched upstream trees (oracles are loaded from them by file path); intra-op
threads of pytest-xdist workers.

The myfla tests also run in the runtime-floor environment (torch 1.13, no portaudit; see
tools/check_runtime_floor.sh). There portaudit, which fetches fla's reference code, is not
installed: a test or test module that needs it is skipped with the reason below instead of failing
to import, and everything else runs. Likewise portaudit's tests run on other Pythons without torch
(tools/check_python_versions.sh): a test module that imports torch or myfla is skipped there.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

import pytest

try:
    import torch
except ModuleNotFoundError:          # portaudit's tests on another Python, without torch
    torch = None

FLA_040 = ["fla-core==0.4.0", "flash-linear-attention==0.4.0"]
FLA_060 = ["fla-core==0.6.0", "flash-linear-attention==0.6.0"]

NO_PORTAUDIT = ("needs portaudit (it fetches fla's reference code, the oracle of this test); "
                "not installed in this environment (the torch-1.13 runtime-floor run)")


class _SkipWithoutPortaudit(importlib.abc.MetaPathFinder):
    """Last on sys.meta_path, so it is asked only when no installed package answers: an import of
    portaudit then skips the importing test (or the whole module, at module level)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] == "portaudit":
            pytest.skip(NO_PORTAUDIT, allow_module_level=True)
        return None


if importlib.util.find_spec("portaudit") is None:
    sys.meta_path.append(_SkipWithoutPortaudit())

NO_TORCH = ("needs torch (myfla, the numerics); not installed in this environment (portaudit's tests "
            "on another Python, tools/check_python_versions.sh)")


class _SkipWithoutTorch(importlib.abc.MetaPathFinder):
    """First on sys.meta_path where torch is not installed: a test module importing torch, myfla or
    the shared numerics helpers is skipped instead of failing to import."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in ("torch", "myfla") or fullname == "tests.numerics":
            pytest.skip(NO_TORCH, allow_module_level=True)
        return None


if torch is None:
    sys.meta_path.insert(0, _SkipWithoutTorch())


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                      # not on Linux
        return os.cpu_count() or 1


def pytest_configure(config):
    """In each of ``-n N`` xdist workers, compute on ``cores // N`` intra-op threads (at least one):
    N workers at torch's default of one thread per core would run N times as many threads as
    there are cores, and OpenMP regions then wait for threads the OS has not scheduled (the
    suite took 730 s instead of 148 s on 2 cores). Subprocesses that tests start inherit the
    setting through OMP_NUM_THREADS / MKL_NUM_THREADS unless those are set already."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if not hasattr(config, "workerinput") or workers < 1 or torch is None:
        return
    per_worker = max(1, _available_cores() // workers)
    torch.set_num_threads(min(torch.get_num_threads(), per_worker))
    os.environ.setdefault("OMP_NUM_THREADS", str(per_worker))
    os.environ.setdefault("MKL_NUM_THREADS", str(per_worker))


def _tree(dists, env_var):
    from portaudit.static.upstream import resolve_upstream

    local = os.environ.get(env_var)
    if local:
        return resolve_upstream(upstream_path=local, package="fla")
    return resolve_upstream(dists, package="fla")


@pytest.fixture(scope="session")
def fla040_root() -> Path:
    """Root of the unpacked fla 0.4.0 wheels ($PORTAUDIT_FLA040 overrides with a local tree)."""
    return _tree(FLA_040, "PORTAUDIT_FLA040")


@pytest.fixture(scope="session")
def fla060_root() -> Path:
    """Root of the unpacked fla 0.6.0 wheels ($PORTAUDIT_FLA060 overrides with a local tree)."""
    return _tree(FLA_060, "PORTAUDIT_FLA060")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    if torch is None:
        yield
        return
    torch.manual_seed(0)
    # every test measures small work afresh (myfla.ops.utils.threads keeps per-thread choices)
    from myfla.ops.utils import threads
    threads.reset_small_work_choices()
    yield
