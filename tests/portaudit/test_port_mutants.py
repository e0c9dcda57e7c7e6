"""The port mutation audit's list stays honest, and its most important mutants stay caught.

tests/portaudit/port_mutants.yaml lists port-side mutants (a stub, a changed default, a wrong
citation, ...) that ``python -m tools.port_mutation_audit`` plants one at a time in a scratch copy of
the port and checks with the real CLI. Here, cheaply: every mutant still applies (its snippet occurs
exactly once in the file it names), and a handful of them are planted in a copy of myfla and audited
in-process against fla 0.4.0, so a change to portaudit that stops catching them fails the default
suite.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from portaudit.static.manifest import load_manifest
from portaudit.static.session import Session

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("port_mutation_audit", ROOT / "tools" / "port_mutation_audit.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


tool = _tool()
MUTANTS = {m.id: m for m in tool.load_mutants()}


def test_the_list_is_well_formed():
    assert 40 <= len(MUTANTS) <= 90
    manifests = {m.manifest for m in MUTANTS.values() if m.port is None}
    assert manifests == set(tool.BUNDLED)
    assert any(m.port for m in MUTANTS.values())
    for m in MUTANTS.values():
        assert m.models and (m.expect or m.other_layer), m.id


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_each_snippet_occurs_exactly_once(mutant):
    m = MUTANTS[mutant]
    root = tool.source_root(m.target)
    if m.port is not None and not root.is_dir():
        pytest.skip(f"{root} absent (python -m tools.realports fetches it)")
    assert (root / m.file).is_file(), m.file
    if m.move_to is not None:
        assert not (root / m.move_to).exists(), m.move_to
    else:
        assert tool.snippet_count(m) == 1, f"{m.id}: the snippet no longer occurs exactly once in {m.file}"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tool.Scratch(tmp_path_factory.mktemp("port-mutants"), {"myfla"})


# the most important mutants: a stub, NotImplementedError, a stand-in, a changed default, a wrong
# citation, a removed symbol, a changed class attribute
REGRESSIONS = ["kda-chunk-kda-fwd-pass", "kda-chunk-kda-notimplemented", "kda-chunk-kda-zeros-like",
               "kda-default-scale", "kda-citation-wrong-lines", "kda-symbol-renamed",
               "models-config-model-type-changed"]


@pytest.mark.parametrize("mutant", REGRESSIONS)
def test_important_mutant_is_caught(scratch, fla040_root, mutant):
    m = MUTANTS[mutant]
    path, original, moved = scratch.apply(m)
    try:
        result = Session(upstream_path=fla040_root).audit(load_manifest(scratch.manifest_of(m)))
    finally:
        tool.Scratch.undo(path, original, moved)
    found = {f.code for f in result.findings if f.status == "open" and f.severity == "error"}
    assert found & set(m.expect), f"{m.id}: expected one of {m.expect}, got {sorted(found)}"
    assert result.passed < result.total
