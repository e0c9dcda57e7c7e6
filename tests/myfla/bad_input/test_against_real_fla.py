"""myfla against what real fla 0.4.0 did with the same bad and empty inputs.

The fixture was recorded on an H100 (torch 2.11, triton 3.6) with
`tools/probe_bad_input.py --impl fla`; here the same probes run on myfla (CPU). Where fla returned,
myfla returns outputs of the same shapes, dtypes, finiteness and zero pattern, unless the probe is
one where fla silently computes garbage and myfla refuses it (ADDED_CHECKS, each a manifest
deviation "input validation added"). Where fla failed, myfla fails with a ValueError, with fla's
message when fla's was a ValueError of its own.
"""
import importlib.util
import json
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
FIXTURE = ROOT / "tests/fixtures/bad_input/probe_fla_0.4.0_h100.json"

# Probes where fla 0.4.0 returns (wrong) numbers and myfla raises a ValueError instead, with why.
ADDED_CHECKS = {
    "kda-layer-short-mask": "a mask shorter than the input: fla unpads the wrong tokens",
    "gdn-layer-short-mask": "a mask shorter than the input: fla unpads the wrong tokens",
    "short-conv-cu_seqlens-batch-2": "fla's kernels leave rows uninitialised",
    "chunk_kda-float-cu_seqlens": "float offsets are truncated by the kernels",
    "chunk_kda-cu_seqlens-short-of-T": "tokens past the last offset are left uncovered",
    "fused_recurrent_kda-2d-cu_seqlens": "a 2-D tensor reads as zero sequences",
    "fused_recurrent_kda-float-cu_seqlens": "float offsets are truncated by the kernels",
    "fused_recurrent_kda-cu_seqlens-short-of-T": "tokens past the last offset are left uncovered",
    "fused_recurrent_kda-int64-qkv": "integer inputs give a truncated integer output",
    "chunk_gated_delta_rule-float-cu_seqlens": "float offsets are truncated by the kernels",
    "chunk_gated_delta_rule-cu_seqlens-short-of-T": "tokens past the last offset are left uncovered",
    "fused_recurrent_gated_delta_rule-2d-cu_seqlens": "a 2-D tensor reads as zero sequences",
    "fused_recurrent_gated_delta_rule-float-cu_seqlens": "float offsets are truncated by the kernels",
    "fused_recurrent_gated_delta_rule-cu_seqlens-short-of-T": "tokens past the last offset are left uncovered",
}
# Probes whose warnings differ on purpose, with why.
WARNINGS_DIFFER = {
    "chunk_kda-head-first": "myfla warns as fla's other chunk ops do; fla 0.4.0's chunk_kda does not",
    "short-conv-cuda-cache-W-1": "the GPU had no causal-conv1d package, so fla warned and fell back to "
                                 "Triton; myfla re-expresses the package, so there is nothing to warn about",
}


def _probe_module():
    spec = importlib.util.spec_from_file_location("probe_bad_input", ROOT / "tools/probe_bad_input.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


RECORDED = json.loads(FIXTURE.read_text())["probes"]


@pytest.fixture(scope="module")
def probe_tool():
    return _probe_module()


def test_fixture_is_real_fla_on_a_gpu():
    data = json.loads(FIXTURE.read_text())
    assert data["impl"] == "fla" and data["device"].startswith("cuda") and len(RECORDED) >= 50
    assert set(ADDED_CHECKS) <= set(RECORDED)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_myfla_matches_or_refuses_what_fla_did(name, probe_tool):
    torch.manual_seed(0)
    probe = probe_tool.probes("myfla", torch.device("cpu"))[name]
    fla = RECORDED[name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            mine = {"returned": probe_tool.describe(probe())}
        except ValueError as e:
            mine = {"raised": "ValueError", "message": str(e)[:300]}
    got_warnings = sorted({str(w.message)[:160] for w in caught})
    if name in ADDED_CHECKS:
        assert "returned" in fla, f"{name}: fla no longer returns here; drop it from ADDED_CHECKS"
        assert mine.get("raised") == "ValueError", mine
        return
    if "returned" in fla:
        assert mine == {"returned": fla["returned"]}, (name, mine, fla)
    else:
        assert mine.get("raised") == "ValueError", (name, mine, fla)
        if fla["raised"] == "ValueError" and fla["where"] not in ("index.py",):
            assert mine["message"] == fla["message"]
    if name in WARNINGS_DIFFER:
        assert got_warnings != fla["warnings"], f"{name}: warnings agree now; drop it from WARNINGS_DIFFER"
    else:
        assert got_warnings == fla["warnings"], (name, got_warnings, fla["warnings"])
