"""Cheap guards of the mutation audit (the audit itself is slow and not part of the default suite:
``python tools/mutation_audit.py``, see notes/mutants-myfla.md).

The list must not rot as the code changes: every mutant's snippet still occurs exactly once in its
file, its targets exist, and the recorded results cover every mutant, each killed or explained.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _driver():
    spec = importlib.util.spec_from_file_location("mutation_audit", ROOT / "tools" / "mutation_audit.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module             # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


DRIVER = _driver()
MUTANTS = DRIVER.load_mutants(DRIVER.DEFAULT_MUTANTS)


def test_list_is_large_and_spread():
    files = {m.file for m in MUTANTS}
    assert len(MUTANTS) >= 60
    for area in ("myfla/ops/kda/", "myfla/ops/gated_delta_rule/", "myfla/ops/common/", "myfla/ops/utils/",
                 "myfla/ops/generalized_delta_rule/dplr/", "myfla/ops/rwkv7/", "myfla/modules/",
                 "myfla/layers/", "myfla/models/utils.py"):
        assert any(f.startswith(area) for f in files), f"no mutant in {area}"


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.id for m in MUTANTS])
def test_snippet_occurs_once_and_targets_exist(mutant):
    source = (ROOT / mutant.file).read_text()
    assert source.count(mutant.snippet) == 1, (
        f"{mutant.id}: the snippet no longer occurs exactly once in {mutant.file}; update "
        "tests/mutation/mutants.yaml and re-run the audit for this mutant (--only)")
    assert mutant.apply(source) != source
    for target in mutant.targets:
        assert (ROOT / target.split("::")[0]).is_file(), f"{mutant.id}: target {target} does not exist"


def test_recorded_results_cover_the_list():
    """The committed audit results name every listed mutant, and each is killed (by its targets or
    by tests/myfla) or carries an 'equivalent' verdict in the list."""
    results = json.loads(DRIVER.DEFAULT_JSON.read_text())
    outcomes = {o["id"]: o for o in results["mutants"]}
    missing = [m.id for m in MUTANTS if m.id not in outcomes]
    assert not missing, f"no audit result for {missing}: run tools/mutation_audit.py --only {','.join(missing)}"
    verdicts = {m.id: m.verdict for m in MUTANTS}
    for mid, o in outcomes.items():
        assert mid in verdicts, f"result for {mid}, which is no longer listed"
        o = dict(o, verdict=verdicts[mid])
        assert DRIVER.accepted(DRIVER.Outcome(**o)), f"{mid}: {o['status']} and not explained as equivalent"


def test_driver_rejects_ambiguous_snippets_and_parses_failures():
    m = DRIVER.Mutant(id="x", file="f.py", snippet="a", replacement="b", targets=["t"], models="m")
    with pytest.raises(DRIVER.MutantsFileError, match="2 times"):
        m.apply("a a")
    assert m.apply("xay") == "xby"
    out = "....\nFAILED tests/x.py::test_a[1] - AssertionError\nERROR tests/y.py::test_b\n"
    assert DRIVER.first_failure(out) == "tests/x.py::test_a[1]"
    assert DRIVER.first_failure("1 passed") is None
