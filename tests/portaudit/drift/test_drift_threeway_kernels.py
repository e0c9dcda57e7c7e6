"""Three-way drift of a translation: an upstream Triton kernel has no same-named port definition
(the port re-expresses it inside the function that cites it), so a cited kernel is classified by the
upstream change, as `check` accounts for it; an uncited one is missing in the port."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from portaudit.cli import app

from .trees import write

KERNEL_V1 = '''
import triton


@triton.jit
def knl_changed(x):
    y = x + 1


@triton.jit
def knl_same(x):
    y = x + 2


@triton.jit
def knl_uncited(x):
    y = x + 4


def wrapper(x):
    knl_changed[(1,)](x)
    knl_same[(1,)](x)
    knl_uncited[(1,)](x)
    return x
'''

PORT = '''
def wrapper(x):
    """The kernels in torch.

    Source: pkg/k.py:L4-L11 (pkg 1.0)
    """
    return x
'''

MANIFEST = '''
name: translated
upstream:
  package: pkg
  path: v1
  version: "1.0"
port:
  package: port
  path: portroot
  fidelity: translation
entry_points: [pkg.k.wrapper]
stages:
  - id: "1"
    title: ops
    symbols:
      - pkg.k.knl_changed
      - pkg.k.knl_same
      - pkg.k.knl_uncited
      - pkg.k.wrapper
waivers: []
deviations: []
'''


def test_translated_kernels_follow_the_upstream_change(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTAUDIT_CACHE", str(tmp_path / "cache"))
    write(tmp_path / "v1", {"pkg/__init__.py": "", "pkg/k.py": KERNEL_V1})
    write(tmp_path / "v2", {"pkg/__init__.py": "", "pkg/k.py": KERNEL_V1.replace("x + 1", "x * 3 + 1")})
    write(tmp_path / "portroot", {"port/__init__.py": "", "port/k.py": PORT})
    manifest = tmp_path / "translated.yaml"
    manifest.write_text(MANIFEST.lstrip("\n"))
    res = CliRunner().invoke(app, ["drift", "--manifest", str(manifest), "--to", str(tmp_path / "v2"),
                                   "--format", "json", "--no-progress"])
    assert res.exit_code == 1, res.output
    (m,) = json.loads(res.stdout)["manifests"]
    by = {s["symbol"]: s["port"] for s in m["symbols"]}
    assert by["pkg.k.knl_changed"]["state"] == "to do" and by["pkg.k.knl_changed"]["compared"] == "citation"
    assert by["pkg.k.knl_same"]["state"] == "unchanged"
    assert by["pkg.k.knl_uncited"]["state"] == "missing in port"
