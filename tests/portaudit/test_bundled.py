"""Audit data a port ships with itself (portaudit/static/bundled.py): ``PACKAGE:NAME`` manifest and
fixture references, the gate's baseline beside each manifest, and the port located for a manifest
that was installed inside its package or copied away from its port.path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from portaudit.cli import app
from portaudit.errors import UsageError
from portaudit.static.bundled import (is_reference, resolve_fixtures_reference, resolve_manifest_reference)
from portaudit.static.manifest import load_manifest
from portaudit.static.upstream import locate_port_root

from tests.portaudit.test_checks import SYMBOLS, UPSTREAM, port_source

runner = CliRunner()


@pytest.fixture
def installed(ws, monkeypatch):
    """Port package `po` on sys.path with its manifest shipped as po/audit/m.yaml, whose port.path
    ('..' from the source checkout) no longer leads to the package."""
    ws.files(upstream=UPSTREAM)
    ws.files(port={"po/m.py": port_source(ws)})
    audit = ws.port / "po" / "audit"
    audit.mkdir()
    text = ws.manifest(SYMBOLS).read_text().replace("  package: po\n", "  package: po\n  path: ..\n")
    (audit / "m.yaml").write_text(text)
    (audit / "other.yaml").write_text("name: other\n" + text)
    monkeypatch.syspath_prepend(str(ws.port))
    return ws


def test_references_name_shipped_manifests(installed):
    audit = (installed.port / "po" / "audit").resolve()
    assert resolve_manifest_reference("po:m") == [audit / "m.yaml"]
    assert resolve_manifest_reference("po:") == [audit / "m.yaml", audit / "other.yaml"]
    with pytest.raises(UsageError, match="no manifest 'nope' in .*ships: m, other"):
        resolve_manifest_reference("po:nope")
    with pytest.raises(UsageError, match="no package 'not_installed_pkg' is installed"):
        resolve_manifest_reference("not_installed_pkg:m")


def test_an_existing_path_is_never_a_reference(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_reference("po:m")
    Path("po:m").write_text("")
    assert not is_reference("po:m")
    assert not is_reference("dir/po:m") and not is_reference("m.yaml")


def test_a_checkout_keeps_manifests_beside_the_package(ws, monkeypatch):
    ws.files(port={"po/m.py": ""})
    (ws.port / "manifests").mkdir()
    (ws.port / "manifests" / "m.yaml").write_text("name: m\n")
    monkeypatch.syspath_prepend(str(ws.port))
    assert resolve_manifest_reference("po:m") == [(ws.port / "manifests" / "m.yaml").resolve()]


def test_shipped_manifest_audits_the_package_it_is_shipped_in(installed):
    m = load_manifest(installed.port / "po" / "audit" / "m.yaml")
    assert locate_port_root(m) == installed.port.resolve()


def test_copied_manifest_falls_back_to_the_installed_package(installed, tmp_path):
    copied = tmp_path / "elsewhere" / "copy.yaml"
    copied.parent.mkdir()
    shutil.copy(installed.port / "po" / "audit" / "m.yaml", copied)
    m = load_manifest(copied)
    assert not (copied.parent / ".." / "po").exists()
    assert locate_port_root(m) == installed.port.resolve()


def test_check_and_gate_by_reference_use_the_shipped_baseline(installed):
    args = ["--upstream-path", str(installed.up), "--cache-dir", str(installed.cache), "--no-progress"]
    r = runner.invoke(app, ["check", "-m", "po:m", *args])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["gate", "-m", "po:m", "--update-baseline", *args])
    assert r.exit_code == 0, r.output
    shipped = installed.port / "po" / "audit" / "baseline" / "m.json"
    assert shipped.is_file()
    r = runner.invoke(app, ["gate", "-m", "po:m", *args])
    assert r.exit_code == 0 and "audit/baseline/m.json" in r.output.replace("\n", ""), r.output


def test_fixture_reference(installed):
    golden = installed.port / "po" / "audit" / "golden"
    with pytest.raises(UsageError, match="ships no golden fixtures"):
        resolve_fixtures_reference("po:golden")
    golden.mkdir()
    (golden / "index.json").write_text("{}")
    assert resolve_fixtures_reference("po:golden") == golden.resolve()
    with pytest.raises(UsageError, match="PACKAGE:NAME"):
        resolve_fixtures_reference("po:kda")
    with pytest.raises(UsageError, match="ships no golden fixtures 'golden_rwkv7'"):
        resolve_fixtures_reference("po:golden_rwkv7")
    rwkv7 = installed.port / "po" / "audit" / "golden_rwkv7"
    rwkv7.mkdir()
    (rwkv7 / "index.json").write_text("{}")
    assert resolve_fixtures_reference("po:golden_rwkv7") == rwkv7.resolve()
