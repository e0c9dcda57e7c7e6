"""Item 3: `fix-citations --write` edits only the bytes of the citations.

Line endings (CRLF, CR), form feeds and U+2028/U+0085 inside strings, the declared encoding, a
BOM, the permission bits, a symbolic link and a hard link all survive, and an edit after such
characters lands on the right line.
"""

from __future__ import annotations

import os
import stat

import pytest
from typer.testing import CliRunner

from portaudit.cli import app

from tests.portaudit.conftest import manifest_text, write_tree

UPSTREAM = "# one\n# two\ndef f(x, n=2):\n    return x * n\n\n\nX = 3\n"   # f: L3-L4, X: L7
STALE = "Source: up/m.py:L1-L2 (up 1.0)"
FRESH = "Source: up/m.py:L3-L4 (up 1.0)"


def _setup(tmp_path, port_bytes: bytes, symbols=("up.m.f",)):
    write_tree(tmp_path / "upstream", {"up/__init__.py": "", "up/m.py": UPSTREAM})
    write_tree(tmp_path / "port", {"po/__init__.py": ""})
    (tmp_path / "port" / "po" / "m.py").write_bytes(port_bytes)
    (tmp_path / "m.yaml").write_text(manifest_text(list(symbols)))
    return tmp_path / "port" / "po" / "m.py"


def _fix(tmp_path, write=True):
    args = ["fix-citations", "-m", str(tmp_path / "m.yaml"), "--upstream-path", str(tmp_path / "upstream"),
            "--port-path", str(tmp_path / "port"), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    r = CliRunner().invoke(app, args + (["--write"] if write else []))
    assert r.exit_code == 0, r.output
    return r


def _port(nl: str, before: str = "") -> str:
    return nl.join([f'S = "{before}"', "", "", "def f(x, n=2):", f'    """Doc.', "", f"    {STALE}", '    """',
                    "    return x * n", ""])


@pytest.mark.parametrize("nl", ["\r\n", "\r", "\n"])
@pytest.mark.parametrize("before", ["", "a\u2028b", "a\x85b", "a\x0cb", "a\u2029b\x1cc\x1dd\x1ee\x0bf"])
def test_only_the_citation_bytes_change(tmp_path, nl, before):
    old = _port(nl, before).encode("utf-8")
    path = _setup(tmp_path, old)
    _fix(tmp_path)
    assert path.read_bytes() == old.replace(STALE.encode(), FRESH.encode())


def test_inserted_lines_take_the_file_line_ending(tmp_path):
    old = 'S = "a\u2028b"\r\n\r\ndef f(x, n=2):\r\n    """Doc."""\r\n    return x * n\r\n'.encode()
    path = _setup(tmp_path, old)
    _fix(tmp_path)
    new = path.read_bytes()
    assert new == ('S = "a\u2028b"\r\n\r\ndef f(x, n=2):\r\n    """Doc.\r\n\r\n    ' + FRESH
                   + '\r\n    """\r\n    return x * n\r\n').encode()


def test_declared_encoding_and_bom_are_kept(tmp_path):
    latin = ("# -*- coding: latin-1 -*-\n" + _port("\n", "caf\xe9")).encode("latin-1")
    path = _setup(tmp_path, latin)
    _fix(tmp_path)
    assert path.read_bytes() == latin.replace(STALE.encode(), FRESH.encode())
    bom = b"\xef\xbb\xbf" + _port("\n", "x").encode()
    path.write_bytes(bom)
    _fix(tmp_path)
    assert path.read_bytes() == bom.replace(STALE.encode(), FRESH.encode())


def test_mode_symlink_and_hard_link_are_kept(tmp_path):
    old = _port("\n").encode()
    path = _setup(tmp_path, b"")
    real = tmp_path / "elsewhere" / "m_real.py"
    real.parent.mkdir()
    real.write_bytes(old)
    os.chmod(real, 0o751)
    path.unlink()
    path.symlink_to(real)
    _fix(tmp_path)
    assert path.is_symlink() and os.readlink(path) == str(real)
    assert real.read_bytes() == old.replace(STALE.encode(), FRESH.encode())
    assert stat.S_IMODE(real.stat().st_mode) == 0o751
    # a hard-linked module: both names still share one file with the new content
    path.unlink()
    real.write_bytes(old)
    os.link(real, path)
    _fix(tmp_path)
    assert os.path.samefile(real, path) and real.read_bytes() == old.replace(STALE.encode(), FRESH.encode())
    assert not [p for p in path.parent.iterdir() if "portaudit-tmp" in p.name]


def test_dry_run_writes_nothing_and_shows_the_edit(tmp_path):
    old = _port("\r\n", "a\u2028b").encode()
    path = _setup(tmp_path, old)
    r = _fix(tmp_path, write=False)
    assert path.read_bytes() == old
    assert f"-    {STALE}" in r.output and f"+    {FRESH}" in r.output
