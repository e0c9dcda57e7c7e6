"""Copies: bodies compared after normalisation; planted changes caught, cosmetic ones not.

The upstream and the port are small trees in a tmp dir. The port starts as a copy of the upstream
re-formatted, re-commented, with other import spellings and another docstring (none of which may
be a finding); each test plants one change and expects PA601 with a diff that shows it.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from portaudit.cli import app
from portaudit.static.manifest import load_manifest
from portaudit.static.session import Session

from tests.portaudit.conftest import write_tree

UPSTREAM = {
    "up/__init__.py": "",
    "up/helpers.py": '''
        import triton
        import triton.language as tl


        @triton.jit
        def exp(x):
            return tl.exp(x)


        @triton.jit
        def safe_exp(x):
            return tl.exp(tl.where(x <= 0, x, float('-inf')))
        ''',
    "up/ops.py": '''
        import torch
        import triton
        import triton.language as tl

        from up.helpers import exp

        BT_LIST = [16, 32]


        @triton.jit
        def kern(x, y, T, BT: tl.constexpr):
            i = tl.program_id(0)
            b = tl.load(x + i)
            tl.store(y + i, exp(b) * 2.0)


        def helper(a):
            return a + 1


        def fwd(q, k, scale=None, chunk_size=64):
            """Forward."""
            if scale is None:
                scale = q.shape[-1] ** -0.5
            o = helper(q) * scale
            kern[(1,)](q, o, q.shape[0], BT=chunk_size)
            return o, k


        class Norm(torch.nn.Module):
            """A norm."""
            eps = 1e-6

            def forward(self, x):
                return x / (x.norm() + self.eps)
        ''',
}

# The same code as a vendored copy would carry it: reformatted, other comments and docstrings,
# relative imports, `from triton import language as tl`.
PORT = '''
    # SPDX-License-Identifier: Apache-2.0
    # This file contains code copied from the up project.
    import torch
    import triton
    from triton import language as tl

    from .helpers import exp

    BT_LIST = [16,
               32]


    @triton.jit
    def kern(x, y, T, BT: tl.constexpr):
        # one program per row
        i = tl.program_id(0)
        b = tl.load(x + i)   # [BT]
        tl.store(y + i,
                 exp(b) * 2.0)


    def helper(a):
        """Adds one."""
        return (a + 1)


    def fwd(q, k, scale=None, chunk_size=64):
        """Forward (vendored)."""
        if scale is None:
            scale = q.shape[-1]**-0.5
        o = helper(q) * scale
        kern[(1, )](q, o, q.shape[0], BT=chunk_size)
        return (o, k)


    class Norm(torch.nn.Module):
        eps = 1e-6

        def forward(self, x):
            # normalise
            return x / (x.norm() + self.eps)
    '''

SYMBOLS = ["up.ops.BT_LIST", "{symbol: up.ops.kern, kind: kernel}", "up.ops.helper", "up.ops.fwd", "up.ops.Norm"]

runner = CliRunner()


def copy_manifest(symbols=SYMBOLS, extra: str = "", port_extra: str = "") -> str:
    lines = ["upstream:", "  package: up", "  distributions: [up-dist==1.0]", "port:", "  package: po",
             "  fidelity: copy"] + ([port_extra] if port_extra else []) + [
             "citations: {style: off, reason: vendored files are not edited}",
             "stages:", "  - id: '1'", "    title: all", "    symbols:"]
    lines += [f"      - {s}" for s in symbols]
    return "\n".join(lines) + "\n" + textwrap.dedent(extra)


class Copy:
    def __init__(self, tmp):
        self.tmp = tmp
        self.up = tmp / "upstream"
        self.port = tmp / "port"
        self.cache = tmp / "cache"
        write_tree(self.up, UPSTREAM)
        self.helpers = textwrap.dedent(UPSTREAM["up/helpers.py"])

    def write(self, port: str = PORT, manifest: str = None, helpers: str = None) -> "Copy":
        write_tree(self.port, {"po/__init__.py": "", "po/ops.py": port,
                               "po/helpers.py": helpers if helpers is not None else self.helpers})
        (self.tmp / "m.yaml").write_text(manifest or copy_manifest())
        return self

    def audit(self):
        m = load_manifest(self.tmp / "m.yaml")
        return Session(upstream_path=self.up, port_path=self.port, cache_dir=self.cache).audit(m)

    def args(self):
        return ["--manifest", str(self.tmp / "m.yaml"), "--upstream-path", str(self.up), "--port-path",
                str(self.port), "--cache-dir", str(self.cache), "--no-progress"]


@pytest.fixture
def cp(tmp_path):
    return Copy(tmp_path)


def open_findings(result):
    return sorted((f.code, f.symbol) for f in result.findings if f.status == "open")


def test_a_faithful_copy_has_no_findings(cp):
    """Formatting, comments, docstrings, import spelling and parentheses are not differences."""
    r = cp.write().audit()
    assert open_findings(r) == []
    assert r.percent == 100.0
    assert all(s.rules["body"] == "pass" for s in r.symbols)
    assert all(s.body.identical for s in r.symbols if s.body is not None)


@pytest.mark.parametrize("old,new,symbol,minus,plus", [
    ("exp(b) * 2.0)", "exp(b) * 3.0)", "up.ops.kern", "* 2.0", "* 3.0"),                  # a changed constant
    ("return (a + 1)", "return (a - 1)", "up.ops.helper", "a + 1", "a - 1"),              # an operator swap
    ("return (o, k)", "return (k, o)", "up.ops.fwd", "return (o, k)", "return (k, o)"),   # swapped returns
    ("from .helpers import exp", "from .helpers import safe_exp as exp", "up.ops.kern",  # another helper
     "exp(b)", "safe_exp(b)"),
    ("        return x / (x.norm() + self.eps)", "        return x / x.norm()", "up.ops.Norm.forward",
     "self.eps", "x / x.norm()"),
    ("BT_LIST = [16,\n           32]", "BT_LIST = [16, 64]", "up.ops.BT_LIST", "[16, 32]", "[16, 64]"),
])
def test_planted_changes_are_caught_with_a_diff(cp, old, new, symbol, minus, plus):
    port = textwrap.dedent(PORT)
    assert old in port
    r = cp.write(port=port.replace(old, new)).audit()
    body = [f for f in r.findings if f.code == "PA601"]
    assert [f.symbol for f in body] == [symbol]
    diff = body[0].diff
    assert any(ln.startswith("-") and minus in ln for ln in diff.splitlines()[2:]), diff
    assert any(ln.startswith("+") and plus in ln for ln in diff.splitlines()[2:]), diff
    assert r.percent < 100.0


def test_a_removed_branch_is_caught(cp):
    port = textwrap.dedent(PORT).replace("    if scale is None:\n        scale = q.shape[-1]**-0.5\n", "")
    r = cp.write(port=port).audit()
    (f,) = [f for f in r.findings if f.code == "PA601"]
    assert f.symbol == "up.ops.fwd" and "-    if scale is None:" in f.diff


def test_a_renamed_helper_is_a_difference_until_declared(cp):
    port = textwrap.dedent(PORT).replace("def helper(a)", "def add_one(a)").replace("o = helper(q)", "o = add_one(q)")
    symbols = [s for s in SYMBOLS if s != "up.ops.helper"]
    r = cp.write(port=port, manifest=copy_manifest(symbols)).audit()
    assert [f.symbol for f in r.findings if f.code == "PA601"] == ["up.ops.fwd"]
    # declared once: the entry says where the helper lives now, which renames its references
    declared = copy_manifest(symbols + ["{symbol: up.ops.helper, port: po.ops.add_one}"])
    assert open_findings(cp.write(port=port, manifest=declared).audit()) == []


def test_declared_parameter_renames_apply_to_signature_and_body(cp):
    port = textwrap.dedent(PORT).replace("def fwd(q, k,", "def fwd(query, k,").replace(
        "q.shape", "query.shape").replace("helper(q)", "helper(query)").replace("kern[(1, )](q,", "kern[(1, )](query,")
    r = cp.write(port=port).audit()
    codes = {f.code for f in r.findings if f.symbol == "up.ops.fwd"}
    assert {"PA201", "PA202", "PA601"} <= codes
    renamed = copy_manifest([s if s != "up.ops.fwd" else "{symbol: up.ops.fwd, renames: {q: query}}"
                             for s in SYMBOLS])
    assert open_findings(cp.write(port=port, manifest=renamed).audit()) == []
    # the same rename once for the whole manifest (the form transformers' "with q->query" takes)
    manifest_wide = copy_manifest(port_extra="  renames: [q->query]")
    assert open_findings(cp.write(port=port, manifest=manifest_wide).audit()) == []


def test_an_unused_rename_is_reported(cp):
    m = copy_manifest([s if s != "up.ops.helper" else "{symbol: up.ops.helper, renames: {zz: yy}}"
                       for s in SYMBOLS], port_extra="  renames: {nothing: here}")
    r = cp.write(manifest=m).audit()
    assert sorted((f.code, f.detail) for f in r.hygiene) == [("PA507", "nothing"), ("PA507", "zz")]


def test_translations_do_not_compare_bodies(cp):
    """Without fidelity: copy (myfla's manifests) bodies are free; only a figure is kept."""
    port = textwrap.dedent(PORT).replace("return (a + 1)", "return (a - 1)")
    m = copy_manifest().replace("  fidelity: copy\n", "")
    r = cp.write(port=port, manifest=m).audit()
    assert [f for f in r.findings if f.code == "PA601"] == []
    assert all(s.rules["body"] == "n/a" for s in r.symbols)
    # one entry checked as a copy: a translation may keep plain Python close on purpose
    m_entry = m.replace("      - up.ops.helper", "      - {symbol: up.ops.helper, fidelity: copy}")
    r = cp.write(port=port, manifest=m_entry).audit()
    assert [f.symbol for f in r.findings if f.code == "PA601"] == ["up.ops.helper"]


def test_body_figures_for_translations(cp):
    port = textwrap.dedent(PORT).replace("return (a + 1)", "return (a - 1)")
    m = load_manifest(cp.write(port=port, manifest=copy_manifest().replace("  fidelity: copy\n", "")).tmp / "m.yaml")
    r = Session(upstream_path=cp.up, port_path=cp.port, cache_dir=cp.cache, body_figures=True).audit(m)
    figs = {s.symbol: s.body for s in r.symbols if s.body is not None}
    assert figs["up.ops.fwd"].identical and figs["up.ops.fwd"].plain_python is False   # launches kern
    assert not figs["up.ops.helper"].identical and figs["up.ops.helper"].plain_python
    assert 0 < figs["up.ops.helper"].similarity < 1
    assert "up.ops.kern" not in figs                                                     # kernels: no figure


def test_the_baseline_accepts_exactly_one_difference(cp, tmp_path):
    port = textwrap.dedent(PORT).replace("return (a + 1)", "return (a - 1)")
    cp.write(port=port)
    base = tmp_path / "baseline"
    r = runner.invoke(app, ["check", *cp.args(), "--baseline", str(base), "--update-baseline"])
    assert r.exit_code == 0, r.output
    accepted = json.loads((base / "m.json").read_text())["accepted"]
    assert len(accepted) == 1 and accepted[0].startswith("PA601:up.ops.helper:")
    assert runner.invoke(app, ["check", *cp.args(), "--baseline", str(base)]).exit_code == 0
    # the next unexplained change to the same body is a new key: the gate fails
    cp.write(port=port.replace("return (a - 1)", "return (a - 2)"))
    r = runner.invoke(app, ["check", *cp.args(), "--baseline", str(base)])
    assert r.exit_code == 1 and "new: PA601:up.ops.helper:" in r.output


def test_every_format_carries_the_diff(cp):
    cp.write(port=textwrap.dedent(PORT).replace("return (a + 1)", "return (a - 1)"))
    verbose = runner.invoke(app, ["check", *cp.args(), "-v"]).output
    assert "-    return a + 1" in verbose and "+    return a - 1" in verbose
    data = json.loads(runner.invoke(app, ["check", *cp.args(), "-f", "json"]).output)
    (f,) = [f for f in data["manifests"][0]["findings"] if f["code"] == "PA601"]
    assert "+    return a - 1" in f["diff"] and f["key"].startswith("PA601:up.ops.helper:")
    sarif = json.loads(runner.invoke(app, ["check", *cp.args(), "-f", "sarif"]).output)
    res = [x for x in sarif["runs"][0]["results"] if x["ruleId"] == "PA601"][0]
    assert "```diff" in res["message"]["markdown"]
    md = runner.invoke(app, ["check", *cp.args(), "-f", "markdown"]).output
    assert "```diff" in md and "+    return a - 1" in md


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="this Python reads 3.12's `type` statement")
def test_a_body_this_python_cannot_parse_is_reported_not_hidden(cp):
    port = textwrap.dedent(PORT) + "\n\ntype Alias = int\n"      # 3.12 syntax: libcst reads it, ast 3.11 does not
    r = cp.write(port=port).audit()
    assert open_findings(r) == sorted(("PA602", s) for s in (
        "up.ops.BT_LIST", "up.ops.Norm", "up.ops.Norm.forward", "up.ops.fwd", "up.ops.helper", "up.ops.kern"))
    assert all(f.severity == "warning" for f in r.findings) and r.percent == 100.0
