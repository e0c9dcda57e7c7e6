"""Item 5: a manifest name is one plain file-name component; `name: ../victim` writes nothing."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from portaudit.cli import app
from portaudit.errors import UsageError
from portaudit.static.baseline import baseline_path
from portaudit.static.manifest import load_manifest, manifest_name_problem

from tests.portaudit.conftest import manifest_text
from tests.portaudit.hostile.helpers import snapshot

BAD = ["../victim", "..", ".", "a/b", "/etc/passwd", "a\\b", "", " ", "-rf", ".hidden", "x" * 101, "na\u00efve",
       "a\0b", "new\nline", "CON:"]


@pytest.mark.parametrize("name", BAD)
def test_bad_names_are_refused(tmp_path, name):
    assert manifest_name_problem(name) is not None
    p = tmp_path / "m.yaml"
    p.write_text(f"name: {name!r}\n" + manifest_text(["up.a.f"]).replace("'", '"'))
    with pytest.raises(UsageError, match="manifest key 'name'|must not be empty|invalid YAML"):
        load_manifest(p)


def test_good_names_and_the_file_stem(tmp_path):
    for name in ("kda", "gated_deltanet", "fla-0.4.0", "A1"):
        assert manifest_name_problem(name) is None
    odd = tmp_path / "...yaml"            # its stem is '..'
    odd.write_text(manifest_text(["up.a.f"]))
    with pytest.raises(UsageError, match="add a 'name:' key"):
        load_manifest(odd)
    with pytest.raises(UsageError):
        baseline_path(tmp_path, "../victim")


def test_update_baseline_never_writes_outside_the_baseline_dir(ws, tmp_path):
    ws.files({"up/m.py": "def f(x):\n    return x\n"},
             {"po/m.py": 'def f(x):\n    """Source: up/m.py:L1-L2 (up 1.0)"""\n    return x\n'})
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    path = ws.manifest(["up.m.f"])
    path.write_text("name: ../victim\n" + path.read_text())
    (tmp_path / "base").mkdir()
    before = snapshot(tmp_path, skip=("cache",))
    r = CliRunner().invoke(app, ["gate", *ws.cli_args(), "--baseline", str(tmp_path / "base"), "--update-baseline"])
    assert r.exit_code == 2 and "manifest key 'name'" in r.output
    assert victim.read_text() == "precious" and snapshot(tmp_path, skip=("cache",)) == before
    r = CliRunner().invoke(app, ["scaffold", "-e", "up.m.f", "--upstream-path", str(ws.up), "--name", "../victim",
                                 "-o", str(tmp_path / "out.yaml"), "--no-progress"])
    assert r.exit_code == 2 and "--name '../victim'" in r.output and not (tmp_path / "out.yaml").exists()
