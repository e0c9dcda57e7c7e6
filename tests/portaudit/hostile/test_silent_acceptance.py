"""Item 8: careless input is refused with one line instead of being silently accepted.

Each case names what used to happen. The whole-CLI versions of the manifest cases also run from
the corpus (tests/portaudit/corpus/, test_corpus.py).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from portaudit.cli import app
from portaudit.errors import UsageError
from portaudit.static.baseline import load_baseline
from portaudit.static.manifest import load_manifest

from tests.portaudit.conftest import manifest_text

BASE = manifest_text(["up.a.f"])


def _load(tmp_path, text):
    p = tmp_path / "m.yaml"
    p.write_text(text)
    return load_manifest(p)


# (id, manifest text, expected fragment of the one-line error)
MANIFEST_CASES = [
    ("duplicate stages key (the first list was dropped)",
     BASE + "stages:\n  - {id: '2', title: t, symbols: [up.a.g]}\n", "duplicate key 'stages'"),
    ("duplicate key inside an entry", BASE.replace("      - up.a.f", "      - {symbol: up.a.f, symbol: up.a.g}"),
     "duplicate key 'symbol'"),
    ("no stages: passed as 100.0% (0/0)", BASE.split("stages:")[0] + "stages: []\n", "lists no symbols"),
    ("only empty stages", BASE.split("stages:")[0] + "stages:\n  - {id: '1', title: t, symbols: []}\n",
     "lists no symbols"),
    ("waiver of everything", BASE + "waivers:\n  - {symbol: '*', code: '*', reason: all}\n", "not anchored"),
    ("waiver of every package", BASE + "waivers:\n  - {symbol: '*.utils', code: PA101, reason: r}\n", "not anchored"),
    ("waiver of the whole package", BASE + "waivers:\n  - {symbol: 'up.*', code: 'PA*', reason: r}\n",
     "waives every finding of the package"),
    ("wildcard entry symbol", BASE.replace("      - up.a.f", "      - 'up.a.*'"), "wildcards are allowed only in waivers"),
    ("keyword in a dotted name", BASE.replace("      - up.a.f", "      - up.class.f"), "not a dotted Python name"),
    ("empty port override ignored", BASE.replace("      - up.a.f", "      - {symbol: up.a.f, port: ''}"),
     "must not be empty"),
    ("entry point listed twice", BASE + "entry_points: [up.a.f, up.a.f]\n", "listed twice"),
    ("distribution listed twice", BASE.replace("[up-dist==1.0]", "[up-dist==1.0, Up_Dist==1.0]"), "named twice"),
    ("NUL in a path", BASE.replace("  package: po", "  package: po\n  path: \"a\\0b\""), "NUL"),
    ("a deviation fixed in a release that is no version",
     BASE + "deviations:\n  - {symbol: up.a.f, reason: r, fixed_upstream_in: '$(touch x)'}\n",
     "is not a release version \\(PEP 440"),
    ("a deviation fixed in a release past the int digit limit (an internal ValueError, found by the fuzzer)",
     BASE + "deviations:\n  - {symbol: up.a.f, reason: r, fixed_upstream_in: '" + "1" * 5000 + "'}\n",
     "is not a release version \\(PEP 440"),
] + [
    (f"tolerance {what}", BASE + f"numerics:\n  tolerances:\n    - {entry}\n", frag)
    for what, entry, frag in [
        ("rtol NaN", "{op: f, rtol: .nan, reason: r}", "finite positive"),
        ("rtol inf", "{op: f, rtol: .inf, reason: r}", "finite positive"),
        ("rtol negative", "{op: f, rtol: -1, reason: r}", "finite positive"),
        ("rtol zero", "{op: f, rtol: 0, reason: r}", "finite positive"),
        ("rtol bool", "{op: f, rtol: true, reason: r}", "finite positive"),
        ("rtol string", "{op: f, rtol: '1e-5', reason: r}", "finite positive"),
        ("op list", "{op: [f], rtol: 1.0e-5, reason: r}", "expected a string"),
        ("dtype mapping", "{op: f, dtype: {x: 1}, rtol: 1.0e-5, reason: r}", "expected a string"),
    ]
]


@pytest.mark.parametrize("case, text, fragment", MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES])
def test_manifest_cases(tmp_path, case, text, fragment):
    with pytest.raises(UsageError, match=fragment) as info:
        _load(tmp_path, text)
    assert "\n" not in str(info.value)


def test_yaml_implicit_types_keep_what_was_written(tmp_path):
    """YAML 1.1 reads 0.40 as 0.4 and 010 as 8; where a string is expected the text is kept."""
    text = BASE.replace("  package: up\n", "  package: up\n  version: 0.40\n").replace("id: '1'", "id: 010") \
        .replace("title: all", "title: on")
    m = _load(tmp_path, text)
    assert m.upstream.version == "0.40" and m.stages[0].id == "010" and m.stages[0].title == "on"


def _baseline(tmp_path, doc) -> str:
    d = tmp_path / "base"
    d.mkdir(exist_ok=True)
    (d / "m.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(UsageError) as info:
        load_baseline(d, "m")
    assert "\n" not in str(info.value)
    return str(info.value)


GOOD_BASELINE = {"schema": "portaudit.baseline/1", "manifest": "m", "min_percent": 100.0, "passed": 1,
                 "total": 1, "accepted": []}

BASELINE_CASES = [
    ("min_percent NaN made the gate unfailable", '{"schema": "portaudit.baseline/1", "manifest": "m", '
     '"min_percent": NaN, "accepted": []}', "NaN"),
    ("min_percent Infinity", '{"schema": "portaudit.baseline/1", "min_percent": Infinity, "accepted": []}',
     "Infinity"),
    ("min_percent true", {**GOOD_BASELINE, "min_percent": True}, "min_percent"),
    ("min_percent string", {**GOOD_BASELINE, "min_percent": "100"}, "min_percent"),
    ("min_percent over 100", {**GOOD_BASELINE, "min_percent": 150}, "min_percent"),
    ("min_percent negative", {**GOOD_BASELINE, "min_percent": -5}, "min_percent"),
    ("accepted string was split into characters", {**GOOD_BASELINE, "accepted": "PA101:x"}, "accepted"),
    ("accepted non-strings", {**GOOD_BASELINE, "accepted": [1, None]}, "accepted"),
    ("passed negative", {**GOOD_BASELINE, "passed": -1}, "passed"),
    ("passed over total", {**GOOD_BASELINE, "passed": 5, "total": 1}, "exceeds"),
    ("total float", {**GOOD_BASELINE, "total": 1.5}, "total"),
    ("another manifest's baseline", {**GOOD_BASELINE, "manifest": "other"}, "baseline of manifest 'other'"),
    ("unknown key", {**GOOD_BASELINE, "acepted": []}, "unknown key 'acepted'"),
    ("duplicate key", '{"schema": "portaudit.baseline/1", "min_percent": 100, "min_percent": 0, "accepted": []}',
     "appears twice"),
    ("top-level array (was an internal error)", "[1, 2]", "expected a JSON object"),
    ("not JSON", "min_percent: 100", "invalid baseline"),
    ("deeply nested JSON", "[" * 100000 + "]" * 100000, "invalid baseline"),
]


@pytest.mark.parametrize("case, doc, fragment", BASELINE_CASES, ids=[c[0] for c in BASELINE_CASES])
def test_baseline_cases(tmp_path, case, doc, fragment):
    assert fragment in _baseline(tmp_path, doc)


def test_good_baseline_still_loads(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps(GOOD_BASELINE))
    b = load_baseline(tmp_path, "m")
    assert b.exists and b.min_percent == 100.0 and b.accepted == []


@pytest.fixture
def clean(ws):
    ws.files({"up/m.py": "def f(x):\n    return x\n"},
             {"po/m.py": 'def f(x):\n    """Source: up/m.py:L1-L2 (up 1.0)"""\n    return x\n'})
    ws.manifest(["up.m.f"])
    return ws


def _run(*args):
    r = CliRunner().invoke(app, list(map(str, args)))
    return r.exit_code, r.output


def test_one_baseline_file_for_several_manifests(clean, tmp_path):
    second = tmp_path / "second.yaml"
    second.write_text((clean.tmp / "m.yaml").read_text().replace("upstream:", "name: second\nupstream:", 1))
    code, out = _run("gate", *clean.cli_args(), "-m", second, "--baseline", tmp_path / "one.json", "--update-baseline")
    assert code == 2 and "one baseline file" in out and not (tmp_path / "one.json").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--port-package", "not a package"], "--port-package 'not a package'"),
    (["--package", "up.class"], "--package 'up.class'"),
    (["-e", "up.m.f x"], "--entry 'up.m.f x'"),
    (["-e", "up.m.f", "-e", "other.m.f"], "not in the upstream package"),
])
def test_scaffold_refuses_what_would_write_a_bad_manifest(clean, tmp_path, args, fragment):
    out = tmp_path / "s.yaml"
    entry = [] if "-e" in args else ["-e", "up.m.f"]
    code, output = _run("scaffold", *entry, *args, "--upstream-path", clean.up, "-o", out, "--no-progress",
                        "--cache-dir", clean.cache)
    assert code == 2 and fragment in output and not out.exists(), output


def test_scaffold_quotes_stage_titles(clean, tmp_path):
    out = tmp_path / "s.yaml"
    code, output = _run("scaffold", "-e", "up.m.f", "--stage", 'we "quote"\nand: newline=up.*', "--upstream-path",
                        clean.up, "--port-package", "po", "-o", out, "--no-progress", "--cache-dir", clean.cache)
    assert code == 0, output
    assert load_manifest(out).stages[0].title == 'we "quote"\nand: newline'


def test_drift_entry_is_checked_before_anything_runs(clean):
    code, out = _run("drift", "-m", clean.tmp / "m.yaml", "--to", clean.up, "--entry", "up.m f", "--no-progress")
    assert code == 2 and "--entry 'up.m f'" in out


def test_special_files_named_like_a_baseline_are_refused(tmp_path):
    import os
    d = tmp_path / "base"
    d.mkdir()
    os.mkfifo(d / "m.json")
    with pytest.raises(UsageError, match="FIFO"):
        load_baseline(d, "m")
    (d / "m.json").unlink()
    (d / "m.json").mkdir()
    with pytest.raises(UsageError, match="directory"):
        load_baseline(d, "m")


def test_citation_line_numbers_are_bounded(ws):
    """A citation with a 5000-digit line number overflowed int() (an internal error); it is now a
    malformed citation (PA306) like any other."""
    ws.files({"up/m.py": "def f(x):\n    return x\n"},
             {"po/m.py": f'def f(x):\n    """Source: up/m.py:L{"9" * 5000}-L2 (up 1.0)"""\n    return x\n'})
    codes = sorted(f.code for f in ws.audit(["up.m.f"]).findings if f.status == "open")
    assert "PA306" in codes
