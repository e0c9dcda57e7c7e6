"""The static commands work where torch is not installed; the numeric ones say what to install.

Each command runs in a child interpreter whose import system refuses ``torch`` (and the port
``myfla``, which imports it): ``check``, ``gate``, ``fix-citations``, ``scaffold``, ``drift`` and
``codes`` must succeed, ``invariants`` and ``golden check`` must exit 2 naming the extra to install.
This is what the ``portaudit`` distribution promises without its ``numerics`` extra.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.portaudit.drift.trees import build
from tests.portaudit.test_checks import SYMBOLS, UPSTREAM, port_source

ROOT = Path(__file__).resolve().parents[2]

WITHOUT_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "myfla"):
            raise ModuleNotFoundError(f"No module named {name!r} (torch is not installed here)", name=name)
        return None

sys.meta_path.insert(0, NoTorch())
sys.argv[0] = "portaudit"
from portaudit.cli import main
main()
"""


def portaudit(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture
def clean(ws):
    ws.files(upstream=UPSTREAM)
    ws.files(port={"po/m.py": port_source(ws)})
    ws.manifest(SYMBOLS)
    return ws


def test_static_commands_need_no_torch(clean, tmp_path):
    for command in (["check"], ["gate", "--baseline", tmp_path / "baseline"], ["fix-citations", "--check"]):
        r = portaudit(*command, *clean.cli_args())
        assert r.returncode == 0, (command, r.stdout[-2000:], r.stderr[-2000:])
    out = tmp_path / "scaffold.yaml"
    r = portaudit("scaffold", "--entry", "up.m.f", "--upstream-path", clean.up, "--port-package", "po",
                  "--cache-dir", clean.cache, "--no-progress", "-o", out)
    assert r.returncode == 0 and out.is_file(), r.stderr[-2000:]
    r = portaudit("codes")
    assert r.returncode == 0 and "PA101" in r.stdout, r.stderr[-2000:]


def test_drift_needs_no_torch(tmp_path):
    toy = build(tmp_path)
    r = portaudit("drift", "--manifest", toy["manifest"], "--to", toy["v2"], "--format", "json",
                  "--cache-dir", tmp_path / "cache", "--no-progress", cwd=tmp_path)
    assert r.returncode == 1 and '"manifests"' in r.stdout, r.stderr[-2000:]   # 1: drift found


@pytest.mark.parametrize("command", [["invariants", "--op", "chunk_kda", "--quick"], ["golden", "check"],
                                     ["golden", "record", "--out", "fixtures"]])
def test_numeric_commands_say_what_to_install(command, tmp_path):
    r = portaudit(*command, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "needs torch" in r.stderr and "pip install 'portaudit[numerics]'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
