"""Builders for small synthetic upstream/port trees written into tmp dirs."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Optional

import pytest

from portaudit.static.manifest import load_manifest
from portaudit.static.results import ManifestResult
from portaudit.static.session import Session


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def manifest_text(symbols: list, waivers: str = "", deviations: str = "", version: str = "1.0") -> str:
    lines = ["upstream:", "  package: up", f"  distributions: [up-dist=={version}]", "port:", "  package: po",
             "stages:", "  - id: '1'", "    title: all", "    symbols:"]
    for s in symbols:
        lines.append(f"      - {s}")
    text = "\n".join(lines) + "\n"
    if waivers:
        text += "waivers:\n" + textwrap.dedent(waivers)
    if deviations:
        text += "deviations:\n" + textwrap.dedent(deviations)
    return text


class Workspace:
    """An upstream tree (package `up`), a port tree (package `po`) and a manifest in tmp."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.up = tmp / "upstream"
        self.port = tmp / "port"
        self.up.mkdir()
        self.port.mkdir()
        self.cache = tmp / "cache"

    def files(self, upstream: Optional[dict] = None, port: Optional[dict] = None) -> "Workspace":
        if upstream:
            write_tree(self.up, {"up/__init__.py": "", **upstream})
        if port:
            write_tree(self.port, {"po/__init__.py": "", **port})
        return self

    def manifest(self, symbols: list, **kw) -> Path:
        path = self.tmp / "m.yaml"
        path.write_text(manifest_text(symbols, **kw))
        return path

    def audit(self, symbols: list, **kw) -> ManifestResult:
        m = load_manifest(self.manifest(symbols, **kw))
        session = Session(upstream_path=self.up, port_path=self.port, cache_dir=self.cache)
        return session.audit(m)

    def cli_args(self) -> list[str]:
        return ["--manifest", str(self.tmp / "m.yaml"), "--upstream-path", str(self.up),
                "--port-path", str(self.port), "--cache-dir", str(self.cache), "--no-progress"]


def open_codes(result: ManifestResult) -> list[str]:
    return sorted(f.code for f in result.findings if f.status == "open")


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path)
