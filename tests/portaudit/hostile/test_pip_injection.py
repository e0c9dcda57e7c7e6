"""Item 1: a manifest can never reach pip's options or make pip build (run) a local project.

Everything here is offline: pip is replaced by a fake that records its argv (in-process by
monkeypatching the subprocess call, and end to end by a fake ``pip`` package on PYTHONPATH).
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from portaudit.errors import UsageError
from portaudit.static import upstream
from portaudit.static.requirements import RequirementError, parse_pinned, parse_pinned_list
from portaudit.static.upstream import fetch_distributions, parse_distributions

from tests.portaudit.conftest import manifest_text, write_tree
from tests.portaudit.hostile.helpers import assert_one_line_error, run_cli

HOSTILE_SPECS = [
    "./evil==1",            # a local project: pip would run its build backend
    "../evil==1",
    "/abs/evil==1",
    "-rfile==1",            # pip's -r option
    "--index-url=http://x==1",
    "-e.==1",
    "evil @ file:///tmp/evil",   # a URL requirement
    "evil @ https://example.invalid/evil-1.tar.gz",
    "evil[extra]==1",
    "evil==1; python_version>'3'",
    "evil>=1",
    "evil==1.*",
    "evil===1",
    "evil==1,==2",
    "evil",
    "evil==not a version",
    "e vil==1",
    "",
    "evil==" + "1" * 5000,  # a release past Python's int digit limit (ValueError, not InvalidVersion)
]


@pytest.mark.parametrize("spec", HOSTILE_SPECS)
def test_hostile_specifiers_are_refused(spec):
    with pytest.raises(RequirementError):
        parse_pinned(spec)
    with pytest.raises(UsageError):
        parse_distributions([spec])


def test_pinned_specifiers_parse_to_rebuilt_text():
    r = parse_pinned("  fla-core == 0.4.0 ")
    assert (r.name, r.version, str(r)) == ("fla-core", "0.4.0", "fla-core==0.4.0")
    assert str(parse_pinned("Flash_Linear.Attention==0.4.0rc1")) == "Flash_Linear.Attention==0.4.0rc1"
    with pytest.raises(RequirementError, match="named twice"):
        parse_pinned_list(["fla-core==0.4.0", "FLA_core==0.4.0"])


def _fake_wheel(dest: Path, name: str, version: str) -> None:
    with zipfile.ZipFile(dest / f"{name.replace('-', '_')}-{version}-py3-none-any.whl", "w") as zf:
        zf.writestr("up/__init__.py", "")
        zf.writestr("up/a.py", "def f(x):\n    return x\n")


def test_pip_gets_options_then_separator_then_one_rebuilt_requirement(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kw):
        calls.append((list(cmd), kw))
        _fake_wheel(Path(cmd[cmd.index("-d") + 1]), "up-dist", "1.0")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(upstream.subprocess, "run", fake_run)
    root = fetch_distributions([" up-dist == 1.0 "], cache_dir=tmp_path / "cache")
    assert (root / "up" / "a.py").is_file()
    (cmd, kw), = calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    sep = cmd.index("--")
    assert cmd[sep + 1:] == ["up-dist==1.0"]          # exactly one argument after the separator
    options = cmd[4:sep]
    assert "--no-deps" in options and options[options.index("--only-binary") + 1] == ":all:"
    assert kw["cwd"] == cmd[cmd.index("-d") + 1]         # never the audited checkout


def test_refused_specifier_never_reaches_subprocess(tmp_path, monkeypatch):
    monkeypatch.setattr(upstream.subprocess, "run", lambda *a, **k: pytest.fail("pip must not run"))
    for spec in ("./evil==1", "-rfile==1"):
        with pytest.raises(UsageError):
            fetch_distributions([spec], cache_dir=tmp_path / "cache")


FAKE_PIP = '''
import json, os, sys, zipfile
rec = os.environ["FAKE_PIP_RECORD"]
with open(rec, "a") as fh:
    fh.write(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd()}) + "\\n")
dest = sys.argv[sys.argv.index("-d") + 1]
name, _, version = sys.argv[-1].partition("==")
with zipfile.ZipFile(os.path.join(dest, name.replace("-", "_") + "-" + version + "-py3-none-any.whl"), "w") as zf:
    zf.writestr("up/__init__.py", "")
    zf.writestr("up/a.py", "def f(x):\\n    return x\\n")
'''

HIJACK = '''
open(os.environ["HIJACK_MARKER"], "w").write("the checkout's pip ran")
'''


@pytest.fixture
def fake_pip_env(tmp_path):
    fake = tmp_path / "fakepip"
    (fake / "pip").mkdir(parents=True)
    (fake / "pip" / "__init__.py").write_text("")
    (fake / "pip" / "__main__.py").write_text(FAKE_PIP)
    return {"FAKE_PIP_RECORD": str(tmp_path / "pip-argv.jsonl"), "PYTHONPATH_EXTRA": str(fake)}


def _cli_env(fake_pip_env, tmp_path):
    import os
    from tests.portaudit.hostile.helpers import REPO
    return {"PYTHONPATH": os.pathsep.join([str(REPO), fake_pip_env["PYTHONPATH_EXTRA"]]),
            "FAKE_PIP_RECORD": fake_pip_env["FAKE_PIP_RECORD"], "HIJACK_MARKER": str(tmp_path / "hijacked")}


def test_cli_end_to_end_with_a_fake_pip(tmp_path, fake_pip_env):
    """`check` fetches through pip with the safe argv; a `pip/` package in the working directory
    (an audited checkout) is never what runs."""
    write_tree(tmp_path / "port", {"po/__init__.py": "", "po/a.py":
                                   'def f(x):\n    """Source: up/a.py:L1-L2 (up 1.0)"""\n    return x\n'})
    (tmp_path / "m.yaml").write_text(manifest_text(["up.a.f"]))
    work = tmp_path / "checkout"
    (work / "pip").mkdir(parents=True)
    (work / "pip" / "__init__.py").write_text("import os\n" + HIJACK)
    (work / "pip" / "__main__.py").write_text("import os\n" + HIJACK)
    env = _cli_env(fake_pip_env, tmp_path)
    proc = run_cli(["check", "-m", str(tmp_path / "m.yaml"), "--port-path", str(tmp_path / "port"),
                    "--cache-dir", str(tmp_path / "cache"), "--no-progress"], cwd=work, env=env)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "hijacked").exists()
    calls = [json.loads(ln) for ln in Path(fake_pip_env["FAKE_PIP_RECORD"]).read_text().splitlines()]
    assert len(calls) == 1
    argv = calls[0]["argv"]
    assert argv[0] == "download" and argv[-2:] == ["--", "up-dist==1.0"] and "--no-deps" in argv
    assert argv[argv.index("--only-binary") + 1] == ":all:"


@pytest.mark.parametrize("spec, key", [("./evil==1", "upstream.distributions[0]"),
                                       ("-rfile==1", "upstream.distributions[0]")])
def test_cli_manifest_with_hostile_distribution_exits_2_and_runs_no_pip(tmp_path, fake_pip_env, spec, key):
    (tmp_path / "m.yaml").write_text(manifest_text(["up.a.f"]).replace("up-dist==1.0", f"'{spec}'"))
    env = _cli_env(fake_pip_env, tmp_path)
    proc = run_cli(["check", "-m", str(tmp_path / "m.yaml"), "--port-path", str(tmp_path),
                    "--cache-dir", str(tmp_path / "cache"), "--no-progress"], env=env)
    assert_one_line_error(proc, 2, f"manifest key '{key}'", spec)
    assert not Path(fake_pip_env["FAKE_PIP_RECORD"]).exists()


@pytest.mark.parametrize("argv", [
    ["scaffold", "-e", "up.a.f", "-u", "./evil==1", "--no-progress"],
    ["drift", "-m", "{m}", "--to", "-rfile==1", "--no-progress"],
    ["drift", "-m", "{m}", "--to", "evil @ file:///tmp/x", "--no-progress"],
])
def test_cli_options_with_hostile_distributions_exit_2(tmp_path, fake_pip_env, argv):
    (tmp_path / "m.yaml").write_text(manifest_text(["up.a.f"]))
    argv = [a.replace("{m}", str(tmp_path / "m.yaml")) for a in argv]
    proc = run_cli([*argv, "--cache-dir", str(tmp_path / "cache")], env=_cli_env(fake_pip_env, tmp_path))
    assert_one_line_error(proc, 2, "NAME==VERSION")
    assert not Path(fake_pip_env["FAKE_PIP_RECORD"]).exists()
