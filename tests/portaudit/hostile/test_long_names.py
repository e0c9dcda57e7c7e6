"""Paths that cannot exist: a name longer than the file system allows (ENAMETOOLONG, 255 bytes on
Linux). Found by tools/fuzz_inputs.py (a parse-cache entry whose citation named such a file); every
command met them with "internal error: OSError" (exit 3). Given on the command line they are bad
input (exit 2, one line); built from a citation they are a finding (the cited file is not upstream)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from portaudit.cli import app
from portaudit.safe_io import is_regular_file

from tests.portaudit.conftest import open_codes
from tests.portaudit.test_checks import SYMBOLS, UPSTREAM, port_source

LONG = "a" * 300


@pytest.mark.parametrize("args", [
    ["check", "-m", LONG],
    ["check", "-m", "pkg:" + LONG],
    ["check", "-m", "M", "--upstream-path", "UP", "--port-path", LONG],
    ["check", "-m", "M", "--upstream-path", LONG],
    ["fix-citations", "-m", "M", "--upstream-path", "UP", "--port-path", LONG],
    ["provenance", "-m", "M", "--upstream-path", "UP", "--port-path", LONG],
    ["drift", "-m", "M", "--to", LONG],
    ["golden", "check", "--fixtures", LONG],
    ["invariants", "-m", LONG],
], ids=lambda a: " ".join(x if len(x) < 20 else "LONG" for x in a))
def test_an_overlong_path_on_the_command_line_is_one_line_of_bad_input(ws, args):
    ws.files(upstream=UPSTREAM)
    ws.files(port={"po/m.py": port_source(ws)})
    given = {"M": str(ws.manifest(SYMBOLS)), "UP": str(ws.up)}
    args = [given.get(a, a) for a in args]
    r = CliRunner().invoke(app, args)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2, r.output
    assert "internal error" not in r.output and "Traceback" not in r.output
    assert any("a name in this path is longer than the file system allows" in ln for ln in lines), r.output


def test_a_citation_of_an_overlong_path_is_a_finding(ws):
    long_cite = f"Source: up/{LONG}.py:L1-L2 (up 1.0)"
    source = port_source(ws).replace('    """Add.\n', f'    """Add.\n\n    {long_cite}\n', 1)
    ws.files(upstream=UPSTREAM)
    ws.files(port={"po/m.py": source})
    result = ws.audit(SYMBOLS)
    assert "PA303" in open_codes(result) or "PA305" in open_codes(result), open_codes(result)
    r = CliRunner().invoke(app, ["fix-citations", *ws.cli_args()])
    assert r.exit_code in (0, 1) and "internal error" not in r.output, r.output


def test_is_regular_file_refuses_what_cannot_exist(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    assert is_regular_file(f) and not is_regular_file(tmp_path)
    assert not is_regular_file(tmp_path / LONG) and not is_regular_file(str(tmp_path) + "/a\0b")
