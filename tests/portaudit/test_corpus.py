"""The corpus of bad input (tests/portaudit/corpus/, issue 15): every case through the real CLI.

Each case asserts the exit code, exactly one stderr line that contains the expected fragment (and
names the file), no traceback, and that the workspace outside the cache is byte-for-byte as
before (a report or baseline is written only by a successful run). Cases that could block or crash
the interpreter run in a child process with a timeout; the others call ``portaudit.cli.run``, the
function the console script runs, in-process.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

from portaudit.cli import run

from tests.portaudit.hostile.helpers import REPO, run_cli, snapshot

CORPUS = Path(__file__).parent / "corpus"
UPSTREAM = "def f(x):\n    return x\n"
PORT = 'def f(x):\n    """Source: up/m.py:L1-L2 (up 1.0)"""\n    return x\n'
MANIFEST = ('upstream:\n  package: up\n  distributions: [up-dist==1.0]\nport:\n  package: po\nstages:\n'
            '  - id: "1"\n    title: all\n    symbols:\n      - up.m.f\n')


class Workspace:
    def __init__(self, root: Path):
        self.root = root
        for rel, text in {"up/up/__init__.py": "", "up/up/m.py": UPSTREAM, "po/po/__init__.py": "",
                          "po/po/m.py": PORT, "m.yaml": MANIFEST}.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        self.manifest = root / "m.yaml"

    def gate_args(self, manifest: Optional[Path] = None) -> list:
        r = self.root
        return ["gate", "-m", str(manifest or self.manifest), "--upstream-path", str(r / "up"), "--port-path",
                str(r / "po"), "--cache-dir", str(r / "cache"), "--baseline", str(r / "base"), "--update-baseline",
                "-f", "json", "-o", str(r / "out" / "report.json"), "--no-progress"]


@dataclass
class Case:
    id: str
    setup: Callable[[Workspace], list]    # prepares the workspace, returns the argv
    code: int
    fragment: str
    child: bool = False                    # run in a child process (could crash or block in-process)
    names_file: Optional[str] = None       # a path fragment the one line must contain


def manifest_case(name: str, fragment: str, command: str = "gate") -> Case:
    def setup(ws: Workspace) -> list:
        shutil.copyfile(CORPUS / "manifests" / name, ws.manifest)
        if command == "invariants":
            return ["invariants", "-m", str(ws.manifest), "--op", "all"]
        return ws.gate_args()
    return Case(f"manifests/{name}" + ("" if command == "gate" else f" ({command})"), setup, 2, fragment,
                names_file="m.yaml")


def source_case(name: str, code: int, fragment: str, side: str = "po", child: bool = False) -> Case:
    def setup(ws: Workspace) -> list:
        shutil.copyfile(CORPUS / "sources" / name, ws.root / side / side / "m.py")
        return ws.gate_args()
    return Case(f"sources/{name} as {side}/m.py", setup, code, fragment, child,
                names_file=f"{side}/{side}/m.py" if code else None)


def baseline_case(name: str, fragment: str) -> Case:
    def setup(ws: Workspace) -> list:
        (ws.root / "base").mkdir()
        shutil.copyfile(CORPUS / "baselines" / name, ws.root / "base" / "m.json")
        args = ws.gate_args()
        return args[:args.index("--update-baseline")] + args[args.index("--update-baseline") + 1:]
    return Case(f"baselines/{name}", setup, 2, fragment, names_file="base/m.json")


def golden_case(name: str, fragment: str) -> Case:
    def setup(ws: Workspace) -> list:
        (ws.root / "fx").mkdir()
        shutil.copyfile(CORPUS / "golden" / name, ws.root / "fx" / "index.json")
        return ["golden", "check", "--fixtures", str(ws.root / "fx"), "-o", str(ws.root / "out" / "r.json")]
    return Case(f"golden/{name}", setup, 2, fragment, names_file="fx/index.json")


def generated(id: str, make: Callable[[Workspace], list], code: int, fragment: str, child: bool = False,
              names_file: Optional[str] = None) -> Case:
    return Case(id, make, code, fragment, child, names_file)


def _write_port(ws: Workspace, data: bytes) -> list:
    (ws.root / "po" / "po" / "m.py").write_bytes(data)
    return ws.gate_args()


def _fifo_manifest(ws: Workspace) -> list:
    ws.manifest.unlink()
    os.mkfifo(ws.manifest)
    return ws.gate_args()


def _fifo_module(ws: Workspace) -> list:
    (ws.root / "po" / "po" / "m.py").unlink()
    os.mkfifo(ws.root / "po" / "po" / "m.py")
    return ws.gate_args()


def _loop_module(ws: Workspace) -> list:
    m = ws.root / "po" / "po" / "m.py"
    m.unlink()
    m.symlink_to(ws.root / "po" / "po" / "loop.py")
    (ws.root / "po" / "po" / "loop.py").symlink_to(m)
    return ws.gate_args()


def _loop_port_path(ws: Workspace) -> list:
    (ws.root / "a").symlink_to(ws.root / "b")
    (ws.root / "b").symlink_to(ws.root / "a")
    args = ws.gate_args()
    args[args.index("--port-path") + 1] = str(ws.root / "a")
    return args


def _unreadable_module(ws: Workspace) -> list:
    os.chmod(ws.root / "po" / "po" / "m.py", 0)
    return ws.gate_args()


def _truncated_wheel(ws: Workspace) -> list:
    fake = ws.root / "fakepip" / "pip"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text(
        "import sys, os\nd = sys.argv[sys.argv.index('-d') + 1]\n"
        "open(os.path.join(d, 'up_dist-1.0-py3-none-any.whl'), 'wb').write(b'PK\\x03\\x04' + b'\\0' * 40)\n")
    args = ws.gate_args()
    i = args.index("--upstream-path")
    return args[:i] + args[i + 2:]


CASES = [
    # item 1: pip never sees a manifest's options or local projects
    manifest_case("pip_local_project.yaml", "manifest key 'upstream.distributions[0]': './evil==1'"),
    manifest_case("pip_option.yaml", "'-rfile==1' starts with '-'"),
    manifest_case("pip_url.yaml", "names a URL"),
    manifest_case("pip_unpinned.yaml", "is not pinned"),
    # item 5
    manifest_case("name_traversal.yaml", "manifest key 'name'"),
    # item 7
    manifest_case("alias_bomb.yaml", "expands to more than"),
    manifest_case("recursive_alias.yaml", "contains itself"),
    manifest_case("deep_nesting.yaml", "nested"),
    manifest_case("huge_integer.yaml", "invalid YAML value"),
    generated("a FIFO as --manifest (blocked forever)", _fifo_manifest, 2, "FIFO", child=True, names_file="m.yaml"),
    generated("/dev/zero as --manifest (read until MemoryError)", lambda ws: ws.gate_args(Path("/dev/zero")), 2,
              "character device", child=True, names_file="/dev/zero"),
    source_case("deep_parentheses.pysrc", 2, "nested more than", child=True),
    source_case("deep_subscripts.pysrc", 2, "nested more than", child=True),
    generated("20000 chained `and` (libcst segfault)", lambda ws: _write_port(
        ws, ("X = " + " and ".join(["a"] * 20000) + "\n").encode()), 2, "nested more than", child=True,
        names_file="po/po/m.py"),
    generated("a 10 MB one-line literal", lambda ws: _write_port(ws, b"X = '" + b"a" * (10 << 20) + b"'\n"), 2,
              "over the", child=True, names_file="po/po/m.py"),
    generated("a 4 MB flat list (minutes and 8 GB in libcst)", lambda ws: _write_port(
        ws, b"X = [" + b"0," * 2_000_000 + b"]\n"), 2, "tokens", child=True, names_file="po/po/m.py"),
    # item 8
    manifest_case("duplicate_stages.yaml", "duplicate key 'stages'"),
    manifest_case("duplicate_entry_key.yaml", "duplicate key 'symbol'"),
    manifest_case("no_stages.yaml", "lists no symbols"),
    manifest_case("rtol_nan.yaml", "finite positive"),
    manifest_case("rtol_inf.yaml", "finite positive"),
    manifest_case("rtol_negative.yaml", "finite positive"),
    manifest_case("tolerance_op_list.yaml", "expected a string"),
    manifest_case("waiver_everything.yaml", "not anchored to a package"),
    manifest_case("waiver_whole_package.yaml", "waives every finding of the package"),
    manifest_case("wildcard_entry.yaml", "wildcards are allowed only in waivers"),
    manifest_case("keyword_in_name.yaml", "not a dotted Python name"),
    manifest_case("empty_port_override.yaml", "must not be empty"),
    manifest_case("entry_points_twice.yaml", "listed twice"),
    manifest_case("distribution_twice.yaml", "named twice"),
    manifest_case("nul_in_path.yaml", "NUL"),
    baseline_case("min_percent_nan.json", "NaN"),
    baseline_case("accepted_string.json", "'accepted' must be a list"),
    baseline_case("top_level_array.json", "expected a JSON object"),
    baseline_case("other_manifest.json", "baseline of manifest 'kda'"),
    baseline_case("duplicate_key.json", "appears twice"),
    baseline_case("min_percent_over_100.json", "from 0 to 100"),
    baseline_case("not_json.json", "invalid baseline"),
    baseline_case("passed_over_total.json", "exceeds"),
    # schema and YAML
    manifest_case("unknown_key.yaml", "unknown key"),
    manifest_case("top_level_list.yaml", "expected a mapping"),
    manifest_case("bad_yaml.yaml", "invalid YAML"),
    manifest_case("two_documents.yaml", "invalid YAML"),
    manifest_case("python_tag.yaml", "invalid YAML"),
    manifest_case("empty.yaml", "the manifest is empty"),
    manifest_case("not_utf8.yaml", "not UTF-8"),
    manifest_case("utf16.yaml", "not UTF-8"),
    manifest_case("nul_byte.yaml", "invalid YAML"),
    # item 9: user errors that were internal errors (exit 3)
    manifest_case("invariants_bad_entry.yaml", "expected a string"),
    manifest_case("invariants_bad_entry.yaml", "expected a string", command="invariants"),
    source_case("syntax_error.pysrc", 2, "cannot parse the module"),
    source_case("syntax_error.pysrc", 2, "cannot parse the module", side="up"),
    source_case("utf16.pysrc", 2, "UTF-16"),
    source_case("latin1_undeclared.pysrc", 2, "is not valid utf-8"),
    source_case("nul_byte.pysrc", 2, "NUL byte"),
    source_case("unknown_encoding.pysrc", 2, "encoding"),
    source_case("unterminated_string.pysrc", 2, "cannot tokenize"),
    source_case("bad_dedent.pysrc", 2, "cannot tokenize"),
    source_case("latin1_declared.pysrc", 0, ""),     # a valid PEP 263 file is read, not refused
    generated("a FIFO where a module belongs", _fifo_module, 2, "FIFO", child=True, names_file="po/po/m.py"),
    generated("a link loop where a module belongs", _loop_module, 2, "symbolic links", names_file="po/po/m.py"),
    generated("a link loop as --port-path", _loop_port_path, 2, "symbolic link loop", names_file="/a"),
    generated("a truncated wheel from the registry", _truncated_wheel, 3, "is corrupt", child=True,
              names_file="up_dist-1.0-py3-none-any.whl"),
    golden_case("not_json.json", "invalid JSON"),
    golden_case("case_is_a_list.json", "expected a mapping"),
    golden_case("file_traversal.json", "plain name of a file"),
    golden_case("bad_status.json", "'status'"),
    golden_case("environment_list.json", "\"environment\" must be a mapping"),
    golden_case("duplicate_key.json", "appears twice"),
    golden_case("params_string.json", "'params' must be a dict"),
]
if os.geteuid() != 0:   # root reads anything
    CASES.append(generated("an unreadable module", _unreadable_module, 2, "Permission denied",
                           names_file="po/po/m.py"))


def _in_process(argv: list, capsys) -> tuple[int, str, str]:
    code = run(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _child(argv: list, ws: Workspace) -> tuple[int, str, str]:
    env = {}
    if (ws.root / "fakepip").is_dir():
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(ws.root / "fakepip")])
    proc = run_cli(argv, env=env, timeout=180)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_corpus_case(case: Case, tmp_path, capsys):
    ws = Workspace(tmp_path)
    argv = case.setup(ws)
    before = snapshot(tmp_path, skip=("cache",))
    code, out, err = _child(argv, ws) if case.child else _in_process(argv, capsys)
    detail = f"exit {code}\nstdout: {out[-1500:]}\nstderr: {err[-3000:]}"
    assert code == case.code, detail
    assert "Traceback" not in err and "Traceback" not in out, detail
    if case.code == 0:
        assert (tmp_path / "out" / "report.json").is_file(), detail
        return
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, detail
    assert case.fragment in lines[0], detail
    if case.names_file:
        assert case.names_file in lines[0], detail
    assert snapshot(tmp_path, skip=("cache",)) == before, "something was written"


def test_every_corpus_file_has_a_case():
    used = set()
    for c in CASES:
        head = c.id.split(" ")[0]
        if "/" in head and (CORPUS / head).is_file():
            used.add(head)
    files = {str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.is_file() and p.name not in ("README.md", ".gitattributes")}
    assert files == used, f"corpus files without a case: {sorted(files - used)}; cases without a file: " \
                          f"{sorted(used - files)}"
