"""`portaudit drift` on a synthetic two-release tree: every change kind, the CLI, --write-manifest."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from portaudit.cli import app
from portaudit.drift.model import (MEMBER_ADDED, MEMBER_REMOVED, PARAM_ADDED, PARAM_ADDED_REQUIRED,
                                   PARAM_DEFAULT, PARAM_KIND, PARAM_MOVED, PARAM_OPTIONAL, PARAM_REMOVED,
                                   PARAM_RENAMED, PARAM_REQUIRED)
from portaudit.static.manifest import load_manifest

from .trees import EXPECTED, build

runner = CliRunner()


@pytest.fixture
def toy(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTAUDIT_CACHE", str(tmp_path / "cache"))
    return build(tmp_path)


def drift(*args):
    return runner.invoke(app, ["drift", *map(str, args), "--no-progress"])


def run_json(toy, *extra):
    res = drift("--manifest", toy["manifest"], "--to", toy["v2"], "--format", "json", *extra)
    assert res.exit_code == 1, res.output
    return json.loads(res.stdout)


def test_every_symbol_gets_its_change_kind(toy):
    data = run_json(toy)
    (m,) = data["manifests"]
    got = {s["symbol"]: (s["status"], s["new_symbol"]) for s in m["symbols"]}
    assert got == EXPECTED
    by = {s["symbol"]: s for s in m["symbols"]}
    assert by["pkg.a.old_name"]["score"] >= 0.65          # a guess, with its score
    assert by["pkg.a.mover"]["body_changed"] is False     # a pure move
    assert by["pkg.old.lost"]["new_ref"].startswith("pkg/new/place.py:L1-")
    assert m["entry_points"] == ["pkg.layer.Layer"]
    counts = m["counts"]
    assert (counts["removed"], counts["renamed"], counts["moved"], counts["unchanged"]) == (1, 1, 2, 2)
    assert counts["body changed"] == 4 and counts["new"] == 1 and counts["signature changed"] == 3


def test_signature_changes_in_griffe_terms(toy):
    (m,) = run_json(toy)["manifests"]
    by = {s["symbol"]: s for s in m["symbols"]}
    sig = {(c["kind"], c["param"]) for c in by["pkg.a.sig_fn"]["signature"]}
    assert sig == {
        (PARAM_RENAMED, "b"), (PARAM_ADDED_REQUIRED, "x_new"), (PARAM_MOVED, "c"), (PARAM_MOVED, "d"),
        (PARAM_DEFAULT, "d"), (PARAM_KIND, "e"), (PARAM_REQUIRED, "e"), (PARAM_REMOVED, "f"),
        (PARAM_MOVED, "g"), (PARAM_DEFAULT, "g"), (PARAM_REMOVED, "h"), (PARAM_ADDED, "k")}
    renamed = next(c for c in by["pkg.a.sig_fn"]["signature"] if c["kind"] == PARAM_RENAMED)
    assert (renamed["old"], renamed["new"], renamed["breaking"]) == ("b", "bb", True)
    assert {(c["kind"], c["param"]) for c in by["pkg.a.opt_fn"]["signature"]} == {(PARAM_OPTIONAL, "b")}
    layer = {(c["member"], c["kind"], c["param"]) for c in by["pkg.layer.Layer"]["signature"]}
    assert layer == {("__init__", PARAM_ADDED, "safe"), ("__init__", PARAM_ADDED, "bound"),
                     ("extra", MEMBER_REMOVED, None)}
    assert MEMBER_ADDED not in {c[1] for c in layer}
    assert by["pkg.a.keep"]["signature"] == [] and by["pkg.a.tweak"]["signature"] == []


def test_new_symbols_from_the_new_closure_grouped_by_module(toy):
    (m,) = run_json(toy)["manifests"]
    assert [(n["symbol"], n["module"], n["kind"]) for n in m["new_symbols"]] == [
        ("pkg.extra.helper_new", "pkg.extra", "function")]
    assert m["old_closure_size"] == 10 and m["new_closure_size"] == 10


def test_port_citations_whose_cited_code_changed(toy):
    cites = run_json(toy)["citations"]
    items = {c["port_symbol"]: c for c in cites["items"]}
    assert items["port.a.tweak"]["status"] == "cited code changed"
    assert items["port.a.tweak"]["changes"] == ["pkg.a.tweak: body changed"]
    assert items["port.a.gone"]["changes"] == ["pkg.a.gone: removed"]
    keep = items["port.a.keep"]       # same code on other lines: only the line numbers are stale
    assert keep["status"] == "cited code relocated"
    assert keep["suggested"].startswith("Source: pkg/a.py:L") and keep["suggested"].endswith("(pkg 2.0)")
    assert keep["suggested"] != keep["citation"].replace("1.0", "2.0")
    assert "port.a.SCALE" in items and items["port.a.SCALE"]["status"] == "cited code relocated"
    assert cites["counts"] == {"cited code changed": 2, "cited code relocated": 2, "unchanged": 0,
                               "cited file missing": 0}


def test_exit_0_when_nothing_changed(toy):
    res = drift("--manifest", toy["manifest"], "--to", toy["v1"], "--format", "json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["changed"] is False
    assert {s["status"] for s in data["manifests"][0]["symbols"]} == {"unchanged"}


def test_rich_tables_and_markdown_checklist(toy):
    res = drift("--manifest", toy["manifest"], "--to", toy["v2"])
    assert res.exit_code == 1
    out = res.stdout
    for text in ("Stage 1 core", "pkg.a.gone", "removed", "pkg.b.mover", "guess, score", "pkg.extra",
                 "Summary: pkg 1.0 -> pkg 2.0", "cited code changed", "drift found"):
        assert text in out, text
    md = drift("--manifest", toy["manifest"], "--to", toy["v2"], "--format", "markdown").stdout
    assert md.startswith("# Upgrade checklist: pkg 1.0 → pkg 2.0")
    assert "- [ ] `pkg.a.gone`" in md and "- [ ] `pkg.a.mover` → `pkg.b.mover`" in md
    assert "- [ ] `pkg.extra`: `helper_new`" in md
    assert "! parameter renamed `b` (b -> bb)" in md


def test_write_manifest_repoints_drops_and_adds(toy, tmp_path):
    original = toy["manifest"].read_text()
    target = tmp_path / "out" / "toy-2.0.yaml"
    res = drift("--manifest", toy["manifest"], "--to", toy["v2"], "--write-manifest", target)
    assert res.exit_code == 1, res.output
    assert toy["manifest"].read_text() == original
    text = target.read_text()
    assert "# removed in pkg 2.0: pkg.a.gone" in text and "# moved from pkg.a.mover" in text
    m = load_manifest(target)
    symbols = [e.symbol for e in m.entries]
    assert "pkg.a.gone" not in symbols and "pkg.old.lost" not in symbols
    assert {"pkg.b.mover", "pkg.a.new_name", "pkg.new.place.lost", "pkg.extra.helper_new"} <= set(symbols)
    assert m.waivers[0].symbol == "pkg.b.mover"
    assert m.upstream.version == "2.0" and m.upstream.path == str(toy["v2"].resolve())
    # the updated manifest describes release 2.0 exactly: no drift left against it
    again = drift("--manifest", target, "--to", toy["v2"], "--format", "json", "--no-citations")
    assert again.exit_code == 0, again.output


def test_write_manifest_refuses_the_original(toy):
    res = drift("--manifest", toy["manifest"], "--to", toy["v2"], "--write-manifest", toy["manifest"])
    assert res.exit_code == 2
    assert "being compared" in res.output and "Traceback" not in res.output


def test_entry_points_can_be_given(toy):
    (m,) = run_json(toy, "--entry", "pkg.layer.Layer")["manifests"]
    assert m["entry_points"] == ["pkg.layer.Layer"] and len(m["new_symbols"]) == 1
    (m,) = run_json(toy, "--entry", "pkg.a.tweak")["manifests"]     # a smaller closure
    assert m["new_closure_size"] == 1 and m["new_symbols"] == []
    assert {s["symbol"] for s in m["symbols"] if s["reached"] is False} >= {"pkg.a.keep", "pkg.layer.Layer"}


@pytest.mark.parametrize("args,code", [
    (["--manifest", "missing.yaml", "--to", "{v2}"], 2),
    (["--manifest", "{manifest}", "--to", "/nonexistent/tree"], 2),
    (["--manifest", "{manifest}", "--to", "{v2}", "--from", "/nonexistent/tree"], 2),
    (["--manifest", "{manifest}", "--to", "{port}"], 3),           # a tree without the package
    (["--manifest", "{manifest}", "--to", "{v2}", "--entry", "pkg.nowhere.f"], 2),
    (["--manifest", "{manifest}"], 2),
])
def test_bad_input_exits_without_traceback(toy, args, code):
    res = drift(*[a.format(**toy) for a in args])
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output


def test_write_manifest_keeps_entry_points_numerics_and_relative_paths(toy, tmp_path):
    """Item 6 of issue 15: nothing of the manifest is lost, and relative paths still resolve."""
    from portaudit.static.upstream import locate_port_root

    text = toy["manifest"].read_text().replace("port:\n", "entry_points: [pkg.layer.Layer]\nport:\n")
    text += ("numerics:\n  cases: fla-0.4.0\n  tolerances:\n"
             "    - {op: chunk_kda, output: dq, dtype: fp32, rtol: 1.0e-05, reason: \"TF32 dots\"}\n")
    toy["manifest"].write_text(text)
    original = load_manifest(toy["manifest"])
    target = tmp_path / "elsewhere" / "deeper" / "toy-2.0.yaml"
    res = drift("--manifest", toy["manifest"], "--to", toy["v2"], "--write-manifest", target)
    assert res.exit_code == 1, res.output
    m = load_manifest(target)
    assert m.entry_points == ["pkg.layer.Layer"]
    assert m.tolerances == original.tolerances and m.numerics == original.numerics
    assert isinstance(m.tolerances[0]["rtol"], float)
    assert locate_port_root(m) == locate_port_root(original) == toy["port"].resolve()
    assert m.port.path == "../../portroot"
