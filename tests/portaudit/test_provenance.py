"""Provenance real copies have: git upstreams at a commit or tag, archives, `portaudit provenance`,
the citation sidecar, citations switched off, and fix-citations on decorated class bodies.

The upstream history is a small git repository built in a tmp dir (no git host is reachable).
"""

from __future__ import annotations

import json
import subprocess
import tarfile
import textwrap

import pytest
from typer.testing import CliRunner

from portaudit.cli import app
from portaudit.errors import UpstreamError
from portaudit.static.gittree import GitRepo, validate_rev
from portaudit.static.manifest import load_manifest
from portaudit.static.session import Session

from tests.portaudit.conftest import write_tree

runner = CliRunner()

V1 = '''
def scale(x):
    return x * 2


def shift(x):
    return x + 1
'''
V2 = V1.replace("x * 2", "x * 3")                 # scale changes
V3 = V2.replace("x + 1", "x + 10")                # then shift changes


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(repo), "PATH": "/usr/bin:/bin"})


@pytest.fixture
def history(tmp_path):
    """up/ at three commits: v1 (tag), then scale changes, then shift changes (tag v3)."""
    repo = tmp_path / "fla-repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for i, text in enumerate((V1, V2, V3), 1):
        write_tree(repo, {"up/__init__.py": "", "up/ops.py": text, "README": f"version {i}\n"})
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", f"version {i}")
        if i in (1, 3):
            git(repo, "tag", f"v{i}")
    write_tree(repo, {"README": "docs only\n"})                # a commit that touches no code
    git(repo, "commit", "-q", "-am", "docs")
    return repo


def manifest(tmp_path, upstream: str, port_text: str, citations: str = "citations: {style: off, reason: vendored}") -> object:
    write_tree(tmp_path / "port", {"po/__init__.py": "", "po/ops.py": port_text})
    path = tmp_path / "m.yaml"
    lines = ["upstream:"] + [f"  {ln}" for ln in upstream.splitlines()] + [
        "port: {package: po, path: port, fidelity: copy}", citations, "stages:", '  - id: "1"',
        "    title: ops", "    symbols: [up.ops.scale, up.ops.shift]"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_git_upstream_at_a_tag_or_commit(history, tmp_path):
    path = manifest(tmp_path, "package: up\ngit: fla-repo\nrev: v1", V1)
    r = Session(cache_dir=tmp_path / "cache").audit(load_manifest(path))
    assert [f.code for f in r.findings if f.status == "open"] == []
    # the port is v1's code: against v3 both bodies differ
    sha = GitRepo(history).resolve("v3")
    path.write_text(path.read_text().replace("rev: v1", f"rev: {sha[:12]}"))
    r = Session(cache_dir=tmp_path / "cache").audit(load_manifest(path))
    assert sorted(f.symbol for f in r.findings if f.code == "PA601") == ["up.ops.scale", "up.ops.shift"]
    assert load_manifest(path).citation_version == sha[:12]


def test_upstream_git_on_the_command_line(history, tmp_path):
    path = manifest(tmp_path, "package: up\ngit: elsewhere\nrev: v1", V1)
    args = ["check", "-m", str(path), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    r = runner.invoke(app, args)
    assert r.exit_code == 3 and "does not exist" in r.output
    assert runner.invoke(app, [*args, "--upstream-git", str(history)]).exit_code == 0


def test_an_archive_upstream(tmp_path):
    src = tmp_path / "src"
    write_tree(src / "fla-main", {"up/__init__.py": "", "up/ops.py": V2})
    archive = tmp_path / "up.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / "fla-main", arcname="fla-main")
    path = manifest(tmp_path, "package: up\narchive: up.tar.gz\nversion: main", V2)
    r = Session(cache_dir=tmp_path / "cache").audit(load_manifest(path))
    assert [f.code for f in r.findings if f.status == "open"] == []


@pytest.mark.parametrize("bad", ["--output=/tmp/x", "-n", "a b", "v1..v2", "$(id)", ""])
def test_revisions_never_become_options(bad):
    with pytest.raises(UpstreamError):
        validate_rev(bad)


def test_a_bad_revision_is_one_line(history, tmp_path):
    path = manifest(tmp_path, "package: up\ngit: fla-repo\nrev: --upload-pack=touch", V1)
    r = runner.invoke(app, ["check", "-m", str(path), "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert r.exit_code == 3 and "not a git revision" in r.output and "Traceback" not in r.output


def test_provenance_finds_the_commit_per_definition_and_overall(history, tmp_path):
    """The port took scale from the second commit and shift from the first: only commit 2 has both."""
    port = V2
    path = manifest(tmp_path, "package: up\ngit: fla-repo\nrev: v3", port)
    r = runner.invoke(app, ["provenance", "-m", str(path), "--cache-dir", str(tmp_path / "cache"),
                            "--no-progress", "-f", "json"])
    assert r.exit_code == 0, r.output
    (data,) = json.loads(r.output)
    sha2 = GitRepo(history).resolve("v3~1")
    assert data["closest"]["commit"] == sha2 and data["closest"]["identical"] == 2
    assert data["closest"]["label"] == f"v1+1 ({sha2[:10]})"
    by = {e["symbol"]: e for e in data["entries"]}
    assert by["up.ops.scale"]["identical_ranges"] == [f"v1+1 ({sha2[:10]}) .. v3 ({GitRepo(history).resolve('v3')[:10]})"]
    assert by["up.ops.shift"]["identical_ranges"] == [f"v1 ({GitRepo(history).resolve('v1')[:10]}) .. v1+1 ({sha2[:10]})"]
    # the commit touching no code is not a candidate of its own
    assert data["candidates"] == 3
    text = runner.invoke(app, ["provenance", "-m", str(path), "--cache-dir", str(tmp_path / "cache"),
                               "--no-progress"]).output
    assert "Closest overall" in text and "2 of 2 definitions identical" in text


def test_provenance_with_a_release_tree(history, tmp_path):
    path = manifest(tmp_path, "package: up\ngit: fla-repo\nrev: v3", V1)
    r = runner.invoke(app, ["provenance", "-m", str(path), "--cache-dir", str(tmp_path / "cache"),
                            "--no-progress", "-f", "json", "--tags-only"])
    (data,) = json.loads(r.output)
    assert data["candidates"] == 2 and data["closest"]["tags"] == ["v1"]


def test_sidecar_citations_are_written_and_checked(history, tmp_path):
    path = manifest(tmp_path, "package: up\ngit: fla-repo\nrev: v1", V1,
                    citations="citations: {style: sidecar, file: m.citations.json}")
    args = ["-m", str(path), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    r = runner.invoke(app, ["check", *args, "-f", "json"])
    codes = sorted(f["code"] for f in json.loads(r.output)["manifests"][0]["findings"])
    assert codes == ["PA301", "PA301"] and r.exit_code == 1
    r = runner.invoke(app, ["fix-citations", *args, "--write"])
    assert r.exit_code == 0, r.output
    car = json.loads((tmp_path / "m.citations.json").read_text())
    assert car["records"]["po.ops.scale"]["source"] == "up/ops.py:L1-L2"
    assert car["upstream"] == {"label": "up", "version": "v1"}
    assert runner.invoke(app, ["check", *args]).exit_code == 0
    assert runner.invoke(app, ["fix-citations", *args, "--check"]).exit_code == 0
    # a stale record is a citation finding like a stale docstring line
    car["records"]["po.ops.scale"]["source"] = "up/ops.py:L5-L6"
    (tmp_path / "m.citations.json").write_text(json.dumps(car))
    r = runner.invoke(app, ["check", *args, "-f", "json"])
    assert [f["code"] for f in json.loads(r.output)["manifests"][0]["findings"]] == ["PA305"]
    # the port's files were never touched
    assert (tmp_path / "port/po/ops.py").read_text() == textwrap.dedent(V1).lstrip("\n")


def test_citations_off_needs_a_reason_and_shows_it(history, tmp_path):
    path = manifest(tmp_path, "package: up\ngit: fla-repo\nrev: v1", V1, citations="citations: {style: off}")
    r = runner.invoke(app, ["check", "-m", str(path), "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert r.exit_code == 2 and "needs a 'reason'" in r.output
    path = manifest(tmp_path, "package: up\ngit: fla-repo\nrev: v1", V1,
                    citations="citations: {style: off, reason: the vendored files carry a licence header only}")
    r = runner.invoke(app, ["check", "-m", str(path), "--cache-dir", str(tmp_path / "cache"), "--no-progress", "-v"])
    assert r.exit_code == 0 and "Citations: off for this manifest: the vendored files carry" in r.output
    assert "citation off" in r.output


def test_fix_citations_keeps_a_decorated_first_method_valid(ws):
    """A class whose body starts with a decorated method: the docstring goes above the decorator."""
    ws.files(upstream={"up/m.py": "class Fn:\n    @staticmethod\n    def forward(x):\n        return x\n"})
    ws.files(port={"po/m.py": "class Fn:\n    @staticmethod\n    def forward(x):\n        return x\n"})
    ws.manifest(["up.m.Fn"])
    r = runner.invoke(app, ["fix-citations", *ws.cli_args(), "--write"])
    assert r.exit_code == 0, r.output
    text = (ws.port / "po/m.py").read_text()
    compile(text, "m.py", "exec")
    assert text.startswith('class Fn:\n    """Source: up/m.py:L1-L4 (up 1.0)"""\n    @staticmethod\n')
    assert runner.invoke(app, ["check", *ws.cli_args()]).exit_code == 0


def test_no_filter_or_hook_of_the_repository_runs(history, tmp_path):
    """The tree is written from blob contents: a smudge filter configured in the repo never runs."""
    marker = tmp_path / "filter-ran"
    (history / ".gitattributes").write_text("*.py filter=evil\n")
    git(history, "add", ".gitattributes")
    git(history, "commit", "-q", "-m", "attributes")
    git(history, "config", "filter.evil.smudge", f"touch {marker}; cat")
    repo = GitRepo(history)
    root = repo.tree(repo.resolve("HEAD"), "up", tmp_path / "cache")
    assert (root / "up/ops.py").read_text() == textwrap.dedent(V3).lstrip("\n")
    assert not marker.exists()
