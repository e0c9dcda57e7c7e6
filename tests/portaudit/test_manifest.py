"""Manifest loading: typed objects, and validation errors naming file:line:col and the key."""

from __future__ import annotations

import re

import pytest

from portaudit.errors import EXIT_USAGE, UsageError
from portaudit.static.manifest import discover_manifests, load_manifest
from portaudit.static.upstream import locate_port_root

GOOD = """\
name: demo
upstream:
  package: up
  distributions: [up-core==1.0, up-extra==1.0]
port:
  package: po
  path: src
  modules: {up.old: po.new}
stages:
  - id: "1"
    title: utilities
    symbols:
      - up.a.f
      - {symbol: up.a.kern, kind: kernel, note: "launched by f"}
waivers:
  - {symbol: up.a.f, code: PA207, reason: "annotation style"}
deviations:
  - {symbol: up.a.f, reason: "bug fixed as in 1.1", fixed_upstream_in: "1.1"}
"""


def load(tmp_path, text):
    p = tmp_path / "m.yaml"
    p.write_text(text)
    return load_manifest(p)


def test_good_manifest_loads_into_typed_objects(tmp_path):
    m = load(tmp_path, GOOD)
    assert m.name == "demo" and m.upstream.distributions == ["up-core==1.0", "up-extra==1.0"]
    assert m.citation_label == "up" and m.citation_version == "1.0"
    assert [(e.symbol, e.kind, e.stage_id) for e in m.entries] == [("up.a.f", None, "1"),
                                                                  ("up.a.kern", "kernel", "1")]
    assert m.entries[1].loc.line == 14
    assert m.port_name_for("up.a.f") == "po.a.f" and m.port_name_for("up.old.g") == "po.new.g"
    assert locate_port_root(m) == (tmp_path / "src").resolve()
    assert m.waivers[0].matches("up.a.f.sub", "PA207") and not m.waivers[0].matches("up.a.g", "PA207")
    assert m.deviations[0].fixed_upstream_in == "1.1"


@pytest.mark.parametrize("old, new, where, key", [
    ("  package: po\n", "  package: po\n  pakage: x\n", "7:3", "port.pakage"),           # unknown key
    ("    title: utilities\n", "    titel: utilities\n", "11:5", "stages[0].titel"),   # typo
    ("kind: kernel", "kind: kernal", "14:35", "stages[0].symbols[1].kind"),            # bad value
    ("code: PA207", "code: PA999", "16:28", "waivers[0].code"),                          # unknown code
    ("[up-core==1.0, up-extra==1.0]", "[up-core>=1.0]", "4:19", "upstream.distributions[0]"),
    ("      - up.a.f\n", "      - up.a.f()\n", "13:9", "stages[0].symbols[0]"),
])
def test_validation_errors_name_file_line_col_and_key(tmp_path, old, new, where, key):
    with pytest.raises(UsageError) as exc:
        load(tmp_path, GOOD.replace(old, new, 1))
    msg = str(exc.value)
    assert re.match(rf".*m\.yaml:{where}: manifest key '{re.escape(key)}'", msg), msg
    assert exc.value.exit_code == EXIT_USAGE


def test_missing_required_key_and_empty_and_bad_yaml(tmp_path):
    with pytest.raises(UsageError, match=r"m\.yaml:1:1: manifest key '<document>': missing required key 'stages'"):
        load(tmp_path, GOOD.split("stages:")[0])
    with pytest.raises(UsageError, match="the manifest is empty"):
        load(tmp_path, "")
    with pytest.raises(UsageError, match=r"m\.yaml:3:\d+: invalid YAML"):
        load(tmp_path, "upstream:\n  package: up\n  - x\n")
    with pytest.raises(UsageError, match="manifest file not found"):
        load_manifest(tmp_path / "nope.yaml")


def test_duplicate_stage_id(tmp_path):
    text = GOOD.replace("waivers:", '  - id: "1"\n    title: again\n    symbols: []\nwaivers:')
    with pytest.raises(UsageError, match=r"stage id '1' is used twice"):
        load(tmp_path, text)


def test_directory_discovery(tmp_path):
    (tmp_path / "b.yaml").write_text(GOOD)
    (tmp_path / "a.yml").write_text(GOOD)
    assert [p.name for p in discover_manifests([tmp_path])] == ["a.yml", "b.yaml"]
    with pytest.raises(UsageError, match="no \\*.yaml manifests"):
        discover_manifests([tmp_path / "empty"]) if (tmp_path / "empty").mkdir() is None else None


def test_docs_code_table_matches_the_code_registry():
    from pathlib import Path

    from portaudit.static.findings import CODES

    text = (Path(__file__).resolve().parents[2] / "docs/codes.md").read_text()
    for c in CODES.values():
        assert f"| {c.code} | {c.family} | {c.severity} | {c.title} | {c.help} |" in text


def test_entry_points_and_numerics_tolerances_load(tmp_path):
    text = GOOD.replace("stages:", "entry_points: [up.a.f]\nnumerics:\n  tolerances:\n"
                        "    - {op: f, output: o, dtype: float32, rtol: 2.0e-5, reason: \"TF32 dots\"}\nstages:", 1)
    m = load(tmp_path, text)
    assert m.entry_points == ["up.a.f"]
    assert m.tolerances == [{"op": "f", "output": "o", "dtype": "float32", "rtol": 2.0e-5, "reason": "TF32 dots"}]


@pytest.mark.parametrize("entry, why", [
    ("{op: f, rtol: 1.0e-5}", "missing required key 'reason'"),
    ("{op: f, rtol: -1, reason: x}", "expected a finite positive number"),
    ("{op: f, rtol: .nan, reason: x}", "expected a finite positive number"),
    ("{op: f, rtol: .inf, reason: x}", "expected a finite positive number"),
    ("{op: f, rtol: 0, reason: x}", "expected a finite positive number"),
    ("{op: f, rtol: true, reason: x}", "expected a finite positive number"),
    ("{op: f, rtol: '1e-5', reason: x}", "expected a finite positive number"),
    ("{op: [f], rtol: 1.0e-5, reason: x}", "expected a string"),
    ("{op: f, dtype: {a: 1}, rtol: 1.0e-5, reason: x}", "expected a string"),
    ("{op: f, rtol: 1.0e-5, reason: x, tol: 2}", "unknown key"),
])
def test_numerics_tolerance_errors_name_the_key(tmp_path, entry, why):
    text = GOOD.replace("stages:", f"numerics:\n  tolerances:\n    - {entry}\nstages:", 1)
    with pytest.raises(UsageError) as exc:
        load(tmp_path, text)
    assert why in str(exc.value) and "numerics" in str(exc.value) and re.search(r"m\.yaml:\d+:\d+", str(exc.value))
