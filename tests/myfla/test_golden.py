"""myfla against golden fixtures recorded from real fla 0.4.0 on a GPU (tests/fixtures/golden, and
tests/fixtures/golden_rwkv7 for the RWKV-7 cases once they are recorded).

One test per recorded case: the port runs on the recorded inputs (layers load the recorded
state_dict) and every output, final state and gradient must match fla within the TF32-aware
tolerances of portaudit.numerics.fla040.tolerances.GOLDEN_RULES. A case whose myfla API is missing
fails (status "missing"); it is never skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from portaudit.numerics.case_registry import load_case_registry
from portaudit.numerics.fixtures import read_fixtures
from portaudit.numerics.golden import check_golden
from portaudit.numerics.registry import get_implementation

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# one directory per recording run: the KDA/GDN set, and the RWKV-7 set once recorded on a GPU
SUITES = [d for d in (FIXTURES / "golden", FIXTURES / "golden_rwkv7") if (d / "index.json").is_file()]
CASES = [(d, name) for d in SUITES for name in sorted(read_fixtures(d).cases)]
FLA040 = load_case_registry("fla-0.4.0")


@pytest.fixture(scope="module")
def myfla_impl():
    return get_implementation("myfla", FLA040)


@pytest.mark.parametrize("fixtures,case", CASES, ids=[name for _, name in CASES])
def test_golden(myfla_impl, fixtures, case):
    torch.set_num_threads(2)
    rows = check_golden(myfla_impl, fixtures, FLA040, pattern=case)
    rows = [r for r in rows if r.case.split(" [")[0] == case]
    assert rows, f"no result for {case}"
    bad = [f"{r.output}: {r.status} rms={r.rms_ratio:.2e} tol={r.tol:.1e} {r.message}" for r in rows if r.failed]
    assert not bad, f"{case}:\n  " + "\n  ".join(bad)
