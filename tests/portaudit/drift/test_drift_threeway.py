"""Three-way drift (issue 11): upstream v1 -> v2 against a copy taken from v1 with some of v2 applied."""

from __future__ import annotations

import json
import subprocess

import pytest
from typer.testing import CliRunner

from portaudit.cli import app
from portaudit.drift.engine import Release, run_drift
from portaudit.static.index.tree import TreeIndex
from portaudit.static.manifest import load_manifest
from portaudit.static.session import Session

from .threeway_trees import EXPECTED_PORT, build

runner = CliRunner()


@pytest.fixture
def vendored(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTAUDIT_CACHE", str(tmp_path / "cache"))
    return build(tmp_path)


def drift(*args):
    return runner.invoke(app, ["drift", *map(str, args), "--no-progress"])


def run_json(v, *extra):
    res = drift("--manifest", v["manifest"], "--to", v["v2"], "--format", "json", *extra)
    assert res.exit_code == 1, res.output
    return json.loads(res.stdout)


def test_every_symbol_gets_its_port_state(vendored):
    data = run_json(vendored)
    (m,) = data["manifests"]
    got = {s["symbol"]: s["port"]["state"] for s in m["symbols"]}
    assert got == EXPECTED_PORT
    by = {s["symbol"]: s for s in m["symbols"]}
    # the port's own module and file, never a mirror of the upstream's layout
    assert by["pkg.a.f_todo"]["port"]["port_symbol"] == "host.vendor.ops.alpha.f_todo"
    assert by["pkg.a.f_todo"]["port"]["port_ref"].startswith("host/vendor/ops/alpha.py:")
    assert by["pkg.a.mover"]["status"] == "moved" and by["pkg.a.mover"]["port"]["port_ref"].startswith(
        "host/vendor/ops/beta.py:")
    assert by["pkg.a.f_conflict"]["port"]["hunks"] == "0/1"
    assert by["pkg.a.f_merge"]["port"]["hunks"] == "0/1"
    assert by["pkg.a.f_already"]["port"]["similarity_new"] == 1.0
    # the old closure's helper that v2 removed and the copy never kept
    (helper,) = m["removed_helpers"]
    assert helper["symbol"] == "pkg.h.gone_helper" and helper["port"]["state"] == "already has it"
    counts = m["port_counts"]
    assert counts["to do"] == 3 and counts["conflict"] == 2 and counts["local change"] == 1
    assert counts["already has it"] == 3


def test_checklist_order_and_advice_names_the_port(vendored):
    data = run_json(vendored)
    sections = [it["section"] for it in data["checklist"]]
    order = ["to do", "conflict", "missing in port", "local change", "add", "manifest", "already has it"]
    assert sections == sorted(sections, key=order.index)
    by = {(it["section"], it["symbol"]): it["action"] for it in data["checklist"]}
    assert "host/vendor/ops/alpha.py" in by[("to do", "pkg.a.f_removed_todo")]
    assert by[("to do", "pkg.a.f_removed_todo")].startswith("remove ")
    assert "merges cleanly" in by[("to do", "pkg.a.f_merge")]
    # a new upstream helper goes where the copy keeps pkg.a: its own alpha.py
    assert "`host.vendor.ops.alpha` (host/vendor/ops/alpha.py)" in by[("add", "pkg.a.new_helper")]
    assert "keeps `host.vendor.ops.beta.mover`" in by[("manifest", "pkg.a.mover")]
    md = drift("--manifest", vendored["manifest"], "--to", vendored["v2"], "--format", "markdown").stdout
    assert md.index("### To do") < md.index("### Conflicts") < md.index("### Local changes") \
        < md.index("### Add") < md.index("### Already has it")
    text = drift("--manifest", vendored["manifest"], "--to", vendored["v2"]).stdout
    assert "to do" in text and "host.vendor.ops.alpha.f_todo" in text


def test_translation_uses_signatures_and_citations(vendored):
    """A translation keeps no body: the signature and the cited release decide."""
    man = vendored["manifest"]
    man.write_text(man.read_text().replace("fidelity: copy", "fidelity: translation"))
    (m,) = run_json(vendored)["manifests"]
    by = {s["symbol"]: s["port"] for s in m["symbols"]}
    assert by["pkg.a.f_todo"]["state"] == "to do" and by["pkg.a.f_todo"]["compared"] == "citation"
    assert by["pkg.a.f_local"]["state"] == "unchanged"        # same parameters, upstream unchanged
    assert by["pkg.a.f_removed_todo"]["state"] == "to do"


def test_port_walk_is_limited_to_the_manifest_package(vendored):
    """The host project's 300 unrelated files are never parsed (cold cache)."""
    m = load_manifest(vendored["manifest"])
    cache = vendored["manifest"].parent / "cache-walk"
    old = Release(vendored["v1"], TreeIndex(vendored["v1"], cache), "pkg 1.0", "1.0")
    new = Release(vendored["v2"], TreeIndex(vendored["v2"], cache), "pkg 2.0", "2.0")
    port = TreeIndex(vendored["host"], cache)
    run = run_drift([m], lambda _: (old, new), lambda _: (port, m.port.package))
    assert run.manifests[0].symbols
    parsed = [p for p in port.parsed_files]
    assert parsed and not [p for p in parsed if "/host/other/" in p]
    assert all("/host/vendor/" in p or p.endswith("host/__init__.py") for p in parsed)


def test_written_manifest_checks_at_least_as_complete_for_unchanged_symbols(vendored, tmp_path):
    target = tmp_path / "out" / "vendored-2.0.yaml"
    original_text = vendored["manifest"].read_text()
    res = drift("--manifest", vendored["manifest"], "--to", vendored["v2"], "--write-manifest", target)
    assert res.exit_code == 1, res.output
    assert vendored["manifest"].read_text() == original_text
    text = target.read_text()
    # comments and order kept; the moved entry re-pointed; port.modules follows it
    assert "# A vendored copy of pkg 1.0 inside the host project." in text
    assert "pkg.a: host.vendor.ops.alpha   # the copy's own module names" in text
    assert "- pkg.a.f_same        # identical in both releases" in text
    assert "# removed in pkg 2.0: pkg.a.f_removed_done" in text
    new = load_manifest(target)
    symbols = [e.symbol for e in new.entries]
    assert symbols.index("pkg.a.f_same") < symbols.index("pkg.a.f_todo") < symbols.index("pkg.b.mover")
    assert "pkg.a.new_helper" in symbols and "pkg.a.f_removed_done" not in symbols
    old = load_manifest(vendored["manifest"])
    before = {r.symbol: r.status for r in Session(cache_dir=tmp_path / "c1").audit(old).symbols}
    after = {r.symbol: r.status for r in Session(cache_dir=tmp_path / "c2").audit(new).symbols}
    unchanged = [s for s, st in EXPECTED_PORT.items() if st == "unchanged"]
    renamed = {"pkg.a.mover": "pkg.b.mover"}
    for s in unchanged:
        assert before[s] == "ok", (s, before[s])
        assert after[renamed.get(s, s)] == "ok", (s, after)
    # what the port already took from 2.0 now checks green; what it still lacks no longer does
    assert before["pkg.a.f_already"] != "ok" and after["pkg.a.f_already"] == "ok"
    assert before["pkg.a.f_todo"] == "ok" and after["pkg.a.f_todo"] != "ok"


def test_port_modules_keys_follow_repointed_entries(vendored, tmp_path):
    """A mirror-style entry whose upstream module moved keeps naming the same port definition."""
    man = vendored["manifest"]
    man.write_text(man.read_text().replace("{symbol: pkg.a.mover, port: host.vendor.ops.beta.mover}",
                                           "pkg.a.mover").replace(
        "pkg.a: host.vendor.ops.alpha   # the copy's own module names",
        "pkg.a: host.vendor.ops.alpha   # the copy's own module names\n    pkg.b: host.vendor.ops.beta"))
    # under v1 pkg.a.mover maps to alpha.mover; make the copy define it there
    alpha = vendored["host"] / "host/vendor/ops/alpha.py"
    alpha.write_text(alpha.read_text() + "\n\ndef mover(x):\n    y = x * 7\n    return y - 7\n")
    target = tmp_path / "vendored-2.0.yaml"
    res = drift("--manifest", man, "--to", vendored["v2"], "--write-manifest", target)
    assert res.exit_code == 1, res.output
    old, new = load_manifest(man), load_manifest(target)
    e_old = next(e for e in old.entries if e.symbol == "pkg.a.mover")
    e_new = next(e for e in new.entries if e.symbol == "pkg.b.mover")
    assert new.port_symbol(e_new) == old.port_symbol(e_old) == "host.vendor.ops.alpha.mover"
    for e in new.entries:         # every other kept entry still names its old port definition
        before = next((x for x in old.entries if x.symbol == e.symbol), None)
        if before is not None:
            assert new.port_symbol(e) == old.port_symbol(before)


def test_lost_entry_points_are_a_usage_error(vendored, tmp_path):
    """A new side that holds none of the entry points (one distribution of two) is exit 2."""
    partial = tmp_path / "partial"
    (partial / "pkg").mkdir(parents=True)
    (partial / "pkg" / "__init__.py").write_text('__version__ = "2.0"\n')
    (partial / "pkg" / "h.py").write_text("def other(x):\n    return x\n")
    # the old tree is two wheels: its RECORD says which one ships pkg/a.py
    info = vendored["v1"] / "pkg_layers-1.0.dist-info"
    info.mkdir()
    (info / "RECORD").write_text("pkg/a.py,sha256=x,10\npkg_layers-1.0.dist-info/RECORD,,\n")
    res = drift("--manifest", vendored["manifest"], "--to", partial)
    assert res.exit_code == 2, res.output
    assert "pkg.a.entry" in res.output and "pkg-layers 1.0" in res.output
    assert "none of the 1 entry point(s)" in res.output and "Traceback" not in res.output


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin", "HOME": str(repo)})


def test_git_endpoints(vendored, tmp_path):
    """--from/--to accept commits and tags of the manifest's upstream.git (or --upstream-git)."""
    import shutil

    repo = tmp_path / "upstream-repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    shutil.copytree(vendored["v1"] / "pkg", repo / "pkg")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "v1")
    _git(repo, "tag", "v1.0")
    shutil.rmtree(repo / "pkg")
    shutil.copytree(vendored["v2"] / "pkg", repo / "pkg")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "v2")
    _git(repo, "tag", "v2.0")
    res = drift("--manifest", vendored["manifest"], "--upstream-git", repo, "--from", "v1.0", "--to", "v2.0",
                "--format", "json")
    assert res.exit_code == 1, res.output
    data = json.loads(res.stdout)
    (m,) = data["manifests"]
    assert {s["symbol"]: s["port"]["state"] for s in m["symbols"]} == EXPECTED_PORT
    assert data["from"] == "pkg v1.0" and data["to"] == "pkg v2.0"
    target = tmp_path / "git.yaml"
    res = drift("--manifest", vendored["manifest"], "--upstream-git", repo, "--from", "v1.0", "--to", "v2.0",
                "--write-manifest", target)
    assert res.exit_code == 1, res.output
    new = load_manifest(target)
    assert new.upstream.rev == "v2.0" and new.upstream.git == str(repo.resolve()) and new.upstream.path is None
    # without a repository a revision is a usage error naming the forms
    res = drift("--manifest", vendored["manifest"], "--to", "v2.0")
    assert res.exit_code == 2 and "git revision" in res.output and "Traceback" not in res.output
