"""The CLI through Typer's CliRunner: exit codes, every output format, the gate, scaffold, fix-citations."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest
from typer.testing import CliRunner

from portaudit.cli import app
from portaudit.static.findings import CODES

from tests.portaudit.test_checks import SYMBOLS, UPSTREAM, port_source

runner = CliRunner()


def invoke(args):
    return runner.invoke(app, args, catch_exceptions=False)


def output(result) -> str:
    try:
        return result.output + (result.stderr or "")
    except ValueError:
        return result.output


@pytest.fixture
def clean(ws):
    ws.files(upstream=UPSTREAM)
    ws.files(port={"po/m.py": port_source(ws)})
    ws.manifest(SYMBOLS)
    return ws


@pytest.fixture
def broken(ws):
    """One missing symbol (f) and one wrong default (K.__init__)."""
    ws.files(upstream=UPSTREAM)
    k = port_source(ws).split("class K:")[1].split("class Fn")[0].replace("n=2", "n=3")
    ws.files(port={"po/m.py": port_source(ws, f="", K="class K:" + k.rstrip() + "\n")})
    ws.manifest(SYMBOLS)
    return ws


# -- exit codes -------------------------------------------------------------------------------

def test_clean_exits_0_and_prints_stage_table(clean):
    r = invoke(["check", *clean.cli_args()])
    assert r.exit_code == 0, r.output
    assert "Stage" in r.output and "% (n/m)" in r.output and "100.0% (6/6)" in r.output


def test_findings_exit_1_and_verbose_drill_down(broken):
    r = invoke(["check", *broken.cli_args(), "-v"])
    assert r.exit_code == 1
    assert "PA102" in r.output and "PA206" in r.output
    assert re.search(r"presence\s+fail", r.output) and re.search(r"signature\s+fail", r.output)
    assert "66.7% (4/6)" in r.output


def test_fail_under(broken):
    assert invoke(["check", *broken.cli_args(), "--fail-under", "60"]).exit_code == 0
    r = invoke(["check", *broken.cli_args(), "--fail-under", "70"])
    assert r.exit_code == 1 and "--fail-under 70" in r.output


def test_bad_manifest_exits_2_with_one_line(clean):
    (clean.tmp / "m.yaml").write_text((clean.tmp / "m.yaml").read_text().replace("title:", "titel:"))
    r = invoke(["check", *clean.cli_args()])
    assert r.exit_code == 2
    text = output(r)
    assert "m.yaml:8:5: manifest key 'stages[0].titel'" in text and "Traceback" not in text


def test_missing_upstream_exits_3(clean):
    args = clean.cli_args()
    args[args.index("--upstream-path") + 1] = str(clean.tmp / "nowhere")
    r = invoke(["check", *args])
    assert r.exit_code == 3 and "is not a directory" in output(r)


def test_missing_port_exits_2(clean):
    args = clean.cli_args()
    args[args.index("--port-path") + 1] = str(clean.tmp / "noport")
    r = invoke(["check", *args])
    assert r.exit_code == 2 and "cannot locate the port package 'po'" in output(r)


# -- formats ----------------------------------------------------------------------------------

def test_json_has_documented_fields(broken):
    r = invoke(["check", *broken.cli_args(), "-f", "json"])
    assert r.exit_code == 1
    doc = json.loads(r.output)
    assert doc["schema"] == "portaudit.check/1"
    assert set(doc["summary"]) >= {"manifests", "symbols", "passed", "percent", "failed"}
    m = doc["manifests"][0]
    assert set(m) >= {"name", "path", "upstream", "port", "summary", "stages", "symbols", "findings",
                      "waivers", "deviations", "gate"}
    assert m["stages"][0]["items"] == 6 and m["stages"][0]["passed"] == 4
    assert set(m["stages"][0]["modules"][0]) == {"module", "items", "passed", "percent"}
    f = next(x for x in m["findings"] if x["code"] == "PA206")
    assert set(f) >= {"code", "severity", "family", "title", "symbol", "param", "file", "line", "end_line",
                      "message", "upstream_ref", "status", "key", "manifest", "stage"}
    assert f["param"] == "n" and f["key"] == "PA206:up.m.K.__init__:n" and f["file"].endswith("m.py")
    sym = next(x for x in m["symbols"] if x["symbol"] == "up.m.f")
    assert sym["status"] == "missing" and sym["rules"]["presence"] == "fail"


def test_junit_parses(broken, tmp_path):
    out = tmp_path / "junit.xml"
    r = invoke(["check", *broken.cli_args(), "-f", "junit", "-o", str(out)])
    assert r.exit_code == 1
    root = ET.parse(out).getroot()
    suite = root.find("testsuite")
    assert suite.get("tests") == "6" and suite.get("failures") == "2"
    failed = {c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None}
    assert failed == {"up.m.f", "up.m.K"}


def test_sarif_required_properties_and_locations(broken):
    doc = json.loads(invoke(["check", *broken.cli_args(), "-f", "sarif"]).output)
    assert doc["version"] == "2.1.0" and "$schema" in doc
    run = doc["runs"][0]
    assert run["tool"]["driver"]["name"] == "portaudit"
    rule_ids = [x["id"] for x in run["tool"]["driver"]["rules"]]
    assert rule_ids == sorted(CODES)
    assert run["results"]
    for res in run["results"]:
        assert res["ruleId"] in CODES and res["message"]["text"] and res["level"] in ("error", "warning")
        assert rule_ids[res["ruleIndex"]] == res["ruleId"]
        loc = res["locations"][0]["physicalLocation"]
        assert loc["artifactLocation"]["uri"] and loc["region"]["startLine"] >= 1


def test_github_lines_well_formed(broken):
    lines = invoke(["check", *broken.cli_args(), "-f", "github"]).output.strip().splitlines()
    pat = re.compile(r"^::(error|warning|notice) (file=[^,:]+,line=\d+(,endLine=\d+)?,)?title=[^:]+::\S.*$")
    assert lines and all(pat.match(ln) for ln in lines), lines
    assert any(ln.startswith("::error ") and "PA102" in ln for ln in lines)


def test_markdown_table(broken):
    md = invoke(["check", *broken.cli_args(), "-f", "markdown"]).output
    assert "| Stage | module | items | status | % (n/m) |" in md
    assert "| 1 all | `up.m` | 6 |" in md and "**Total: 66.7% (4/6) complete**" in md


# -- the gate (ratchet) -----------------------------------------------------------------------

def test_gate_ratchet(broken, ws):
    base = ws.tmp / "baseline"
    args = ["gate", *broken.cli_args(), "--baseline", str(base)]
    # no baseline yet: strict, so the broken port fails
    assert invoke(args).exit_code == 1
    r = invoke([*args, "--update-baseline"])
    assert r.exit_code == 0, output(r)
    data = json.loads((base / "m.json").read_text())
    assert data["min_percent"] == pytest.approx(66.6667, abs=1e-3)
    assert "PA102:up.m.f" in data["accepted"] and "PA206:up.m.K.__init__:n" in data["accepted"]
    assert invoke(args).exit_code == 0

    # a regression: launch loses its citation (a new finding on a previously complete symbol)
    src = (ws.port / "po/m.py").read_text()
    bad = re.sub(r'"""Runs the kernel math\..*?"""', '"""Runs the kernel math."""', src, flags=re.S)
    (ws.port / "po/m.py").write_text(bad)
    r = invoke(args)
    assert r.exit_code == 1 and "new: PA301:up.m.launch" in r.output
    r = invoke([*args, "--update-baseline"])
    assert r.exit_code == 2 and "refusing to update the baseline" in output(r)
    assert invoke([*args, "--update-baseline", "--force"]).exit_code == 0

    # progress: the missing symbol arrives (with a finding of its own) -> still green; then fixed
    (ws.port / "po/m.py").write_text(src.replace("class K:", port_source(ws).split("\n\n\n")[1]
                                                 .replace("return a + b", "return a + b  # TODO") + "\n\n\nclass K:"))
    r = invoke(args)
    assert r.exit_code == 0, r.output
    (ws.port / "po/m.py").write_text(port_source(ws))
    r = invoke(args)
    assert r.exit_code == 0 and "fixed" in r.output and "--update-baseline" in r.output
    assert invoke([*args, "--update-baseline"]).exit_code == 0
    data = json.loads((base / "m.json").read_text())
    assert data["min_percent"] == 100 and data["accepted"] == []
    # complete: now any finding fails
    (ws.port / "po/m.py").write_text(bad)
    assert invoke(args).exit_code == 1


def test_gate_fails_when_the_manifest_drops_a_symbol(clean):
    """Deleting an entry is not a way to pass: the baseline records the manifest's symbols and the gate
    names the ones no longer listed, until the smaller contract is recorded with --force."""
    base = clean.tmp / "baseline"
    args = ["gate", *clean.cli_args(), "--baseline", str(base)]
    assert invoke([*args, "--update-baseline"]).exit_code == 0
    data = json.loads((base / "m.json").read_text())
    listed = sorted(s.split(",")[0].replace("{symbol: ", "") for s in SYMBOLS)   # the kernel entry is a mapping
    assert data["schema"] == "portaudit.baseline/2" and data["symbols"] == listed
    assert data["total"] == len(SYMBOLS)

    dropped = "up.m.launch"
    clean.manifest([s for s in SYMBOLS if s != dropped])
    r = invoke(args)
    assert r.exit_code == 1, r.output
    assert f"no longer listed: {dropped}" in r.output and "1 symbol(s) of the baseline no longer listed" in r.output
    doc = json.loads(invoke([*args, "-f", "json"]).output)
    assert doc["manifests"][0]["gate"]["dropped_symbols"] == [dropped] and not doc["manifests"][0]["gate"]["ok"]
    assert f"- no longer listed: `{dropped}`" in invoke([*args, "-f", "markdown"]).output
    r = invoke([*args, "--update-baseline"])
    assert r.exit_code == 2 and "refusing to update the baseline" in output(r) and dropped in output(r)
    assert invoke([*args, "--update-baseline", "--force"]).exit_code == 0
    assert invoke(args).exit_code == 0
    # a symbol added back (or a new one) is progress, never a regression
    clean.manifest(SYMBOLS)
    assert invoke(args).exit_code == 0


def test_gate_compares_counts_against_a_schema_1_baseline(clean):
    """Baselines written before the symbol list (schema 1) still gate, and a smaller manifest fails
    them by its count."""
    base = clean.tmp / "baseline"
    base.mkdir()
    (base / "m.json").write_text(json.dumps({"schema": "portaudit.baseline/1", "manifest": "m", "min_percent": 100.0,
                                             "passed": len(SYMBOLS), "total": len(SYMBOLS), "accepted": []}))
    args = ["gate", *clean.cli_args(), "--baseline", str(base)]
    assert invoke(args).exit_code == 0
    clean.manifest(SYMBOLS[:-1])
    r = invoke(args)
    assert r.exit_code == 1 and f"the manifest lists {len(SYMBOLS) - 1} symbols, the baseline {len(SYMBOLS)}" in r.output


def test_gate_fails_when_a_copy_becomes_a_translation(clean):
    """`fidelity: copy` compares a body with the upstream's; dropping it (the entry becomes a
    translation) weakens the contract without a reason and fails the gate until recorded."""
    copy_entry = "{symbol: up.m.CONST, fidelity: copy}"
    symbols = SYMBOLS[:-1] + [copy_entry]
    clean.manifest(symbols)
    base = clean.tmp / "baseline"
    args = ["gate", *clean.cli_args(), "--baseline", str(base)]
    assert invoke([*args, "--update-baseline"]).exit_code == 0
    assert json.loads((base / "m.json").read_text())["copies"] == ["up.m.CONST"]
    clean.manifest(SYMBOLS)
    r = invoke(args)
    assert r.exit_code == 1 and "no longer checked as a copy: up.m.CONST" in r.output, r.output
    assert "1 symbol(s) the baseline checked as copies are now translations" in r.output
    doc = json.loads(invoke([*args, "-f", "json"]).output)
    assert doc["manifests"][0]["gate"]["no_longer_copies"] == ["up.m.CONST"]
    assert invoke([*args, "--update-baseline"]).exit_code == 2
    assert invoke([*args, "--update-baseline", "--force"]).exit_code == 0
    clean.manifest(symbols)          # a translation checked as a copy from now on is progress
    assert invoke(args).exit_code == 0


GOOD_V2 = '"symbols": ["up.m.CONST", "up.m.Fn", "up.m.K", "up.m.f", "up.m.kern", "up.m.launch"]'


@pytest.mark.parametrize("lists, message", [
    ('"symbols": "up.m.f", "copies": []', "'symbols' must be a list"),
    ('"symbols": ["up.m.f"], "copies": []', "'symbols' lists 1 symbols but 'total' is 6"),
    ('"symbols": [""], "copies": []', "'symbols' must be a list"),
    (GOOD_V2, "missing key 'copies'"),
    (GOOD_V2 + ', "copies": {"up.m.f": 1}', "'copies' must be a list"),
    (GOOD_V2 + ', "copies": ["up.m.g"]', "'copies' names 'up.m.g', which 'symbols' lacks"),
])
def test_a_bad_symbol_list_is_refused(clean, lists, message):
    base = clean.tmp / "baseline"
    base.mkdir()
    (base / "m.json").write_text('{"schema": "portaudit.baseline/2", "manifest": "m", "min_percent": 100, '
                                 f'"passed": 6, "total": 6, "accepted": [], {lists}}}')
    r = invoke(["gate", *clean.cli_args(), "--baseline", str(base)])
    assert r.exit_code == 2 and message in output(r), output(r)


# -- scaffold and fix-citations ---------------------------------------------------------------

def test_scaffold_writes_the_closure(ws, tmp_path):
    ws.files(upstream={
        "up/__init__.py": "",
        "up/layer.py": ("from typing import TYPE_CHECKING\nfrom up.ops import run\nif TYPE_CHECKING:\n"
                        "    from up.cache import Cache\n\n\nclass Layer:\n    def forward(self, x):\n"
                        "        return run(x)\n"),
        "up/ops/__init__.py": "from .impl import run\n",
        "up/ops/impl.py": ("import triton\nfrom ..util import SIZE\n\n\n@triton.jit\ndef kern(x):\n    pass\n\n\n"
                           "def run(x, n=SIZE):\n    return kern(x)\n\n\ndef unused():\n    return 0\n"),
        "up/util.py": "SIZE = 4\n",
        "up/cache.py": "class Cache:\n    pass\n",
    })
    out = tmp_path / "scaffold.yaml"
    r = invoke(["scaffold", "--entry", "up.layer.Layer", "--upstream-path", str(ws.up), "--port-package", "po",
                "--stage", "layer=up.layer", "--cache-dir", str(ws.cache), "--no-progress", "-o", str(out)])
    assert r.exit_code == 0, output(r)
    text = out.read_text()
    from portaudit.static.manifest import load_manifest
    m = load_manifest(out)
    assert sorted(e.symbol for e in m.entries) == ["up.layer.Layer", "up.ops.impl.kern", "up.ops.impl.run",
                                                   "up.util.SIZE"]
    assert "{symbol: up.ops.impl.kern, kind: kernel}" in text and m.stages[0].title == "layer"


def test_fix_citations_dry_run_then_write(ws):
    ws.files(upstream=UPSTREAM)
    good = port_source(ws)
    stale = (good.replace("up/m.py:L", "up/m.py:L1", 1)                       # f: a stale range
             .replace('    """Add.\n', '    """Add.\n', 1))
    stale = re.sub(r"# Source: .*\nCONST", "CONST", stale)                     # CONST: missing citation
    stale = stale.replace('class K:\n    """Source', 'class K:\n    """Keeps n.\n\n    Source', 1)
    ws.files(port={"po/m.py": stale})
    ws.manifest(SYMBOLS)
    args = ["fix-citations", *ws.cli_args()]
    r = invoke(args)
    assert r.exit_code == 0 and "--- a/" in r.output and "run with --write" in r.output
    assert (ws.port / "po/m.py").read_text() == stale                        # dry run: unchanged
    assert invoke([*args, "--check"]).exit_code == 1
    r = invoke([*args, "--write"])
    assert r.exit_code == 0 and "updated 2 citation(s)" in r.output
    assert invoke(["check", *ws.cli_args()]).exit_code == 0
    assert invoke(args).output.strip() == "citations are up to date"


def test_fix_citations_inserts_into_docstrings_and_cites_kernels(ws):
    ws.files(upstream=UPSTREAM)
    src = port_source(ws)
    src = re.sub(r'def f\(a, b=1, \*, c=None\):\n    """Add\.\n\n    Source: .*\n    """',
                 'def f(a, b=1, *, c=None):\n    """Add."""', src)
    src = re.sub(r'(def launch\(x\):\n    """Runs the kernel math\.\n\n    Source: [^\n]*\n)    Source: [^\n]*\n',
                 r"\1", src)
    ws.files(port={"po/m.py": src})
    ws.manifest(SYMBOLS)
    before = invoke(["check", *ws.cli_args(), "-f", "json"])
    codes = sorted(f["code"] for f in json.loads(before.output)["manifests"][0]["findings"])
    assert codes == ["PA105", "PA301"]
    assert invoke(["fix-citations", *ws.cli_args(), "--write"]).exit_code == 0
    assert invoke(["check", *ws.cli_args()]).exit_code == 0


def test_github_format_writes_the_job_summary(broken, tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    invoke(["check", *broken.cli_args(), "-f", "github"])
    assert "| Stage | module | items | status | % (n/m) |" in summary.read_text()


def test_codes_command_lists_every_code():
    out = invoke(["codes", "--markdown"]).output
    assert all(f"| {c} |" in out for c in CODES)


def test_fix_citations_never_half_writes(tmp_path):
    from portaudit.errors import UsageError
    from portaudit.static.fixcite import Edit, apply_edits

    good, bad = tmp_path / "good.py", tmp_path / "bad.py"
    good.write_text("X = 1\n")
    bad.write_text("def f():\n    return 1\n")
    edits = [Edit(str(good), 1, "insert", ["# Source: up/m.py:L1-L1 (up 1.0)"], "up.m.X", "add"),
             Edit(str(bad), 2, "insert", ["  )"], "up.m.f", "broken")]
    with pytest.raises(UsageError, match="would not compile"):
        apply_edits(edits)
    assert good.read_text() == "X = 1\n" and bad.read_text() == "def f():\n    return 1\n"
