"""The RWKV-7 golden cases and invariants: record -> check end to end on CPU (myfla records, fla's CPU
references check, and the other way round), fixtures stay small, and planted errors are caught."""

from __future__ import annotations

import torch

from portaudit.numerics import invariants as inv
from portaudit.numerics.fla040 import REGISTRY as FLA040
from portaudit.numerics.fla040.apis import DPLR_CHUNK, RWKV7_LAYER, TOKEN_SHIFT
from portaudit.numerics.fla040.invariants_rwkv7 import rwkv7_invariants
from portaudit.numerics.fla040.reference import reference_implementation
from portaudit.numerics.golden import check_golden
from portaudit.numerics.golden_cases import find_cases as _find
from portaudit.numerics.record import record
from portaudit.numerics.registry import get_implementation


def find_cases(pattern=None):
    return _find(FLA040.golden_cases(), pattern)

SUBSET = ("rwkv7/dplr_chunk/varlen,rwkv7/dplr_fused_recurrent/base,rwkv7/fused_mul_recurrent/decode,"
          "rwkv7/fused_addcmul/g,rwkv7/token_shift/varlen_cache,rwkv7/RWKV7Attention/layer1,"
          "rwkv7/RWKV7Attention/prefill_short_decode")


def test_rwkv7_cases_are_named_for_their_own_recording_run():
    cases = find_cases("rwkv7/")
    assert cases and all(c.name.startswith("rwkv7/") for c in cases)
    apis = {c.api.rsplit(".", 1)[-1] for c in cases}
    assert apis == {"chunk_dplr_delta_rule", "fused_recurrent_dplr_delta_rule", "chunk_rwkv7",
                    "fused_mul_recurrent_rwkv7", "fused_addcmul_rwkv7", "fused_k_rwkv7", "gate_output_correction",
                    "token_shift", "RWKV7Attention"}


def test_record_with_myfla_then_check_with_fla_references(fla040_root, tmp_path):
    """myfla records, fla's CPU references (its naive DPLR code, op references and layer code)
    reproduce every output and gradient within the golden tolerances, and the fixtures are small."""
    myfla = get_implementation("myfla", FLA040)
    cases = find_cases(SUBSET)
    writer = record(myfla, tmp_path, torch.device("cpu"), cases, log=lambda m: None)
    assert all(r.status == "ok" for r in writer.cases.values()), {n: r.error for n, r in writer.cases.items()}
    rows = check_golden(reference_implementation(fla040_root), tmp_path, FLA040)
    assert rows and not [r for r in rows if r.failed], [(r.case, r.output, r.rms_ratio) for r in rows if r.failed]
    again = check_golden(myfla, tmp_path, FLA040)
    assert all(r.status == "pass" and r.rms_ratio == 0.0 for r in again)
    size = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert size < 2e6


def test_golden_tolerances_catch_a_dplr_state_not_carried(fla040_root, tmp_path):
    ref = reference_implementation(fla040_root)
    record(ref, tmp_path, torch.device("cpu"), find_cases("rwkv7/dplr_chunk/rwkv"), log=lambda m: None)
    base = ref.resolve(DPLR_CHUNK)

    def chunk_dplr_delta_rule(q, k, v, a, b, gk, scale=None, initial_state=None, output_final_state=False, **kw):
        o1, h1 = base(q[:, :16], k[:, :16], v[:, :16], a[:, :16], b[:, :16], gk[:, :16], scale=scale,
                      initial_state=initial_state, output_final_state=True, **kw)
        o2, h2 = base(q[:, 16:], k[:, 16:], v[:, 16:], a[:, 16:], b[:, 16:], gk[:, 16:], scale=scale,
                      initial_state=None, output_final_state=True, **kw)
        return torch.cat([o1, o2], 1), h2
    bad = {r.output: r for r in check_golden(ref.with_overrides("no-carry", {DPLR_CHUNK: chunk_dplr_delta_rule}),
                                             tmp_path, FLA040)}
    assert bad["o"].status == "fail" and bad["o"].rms_ratio > 10 * bad["o"].tol
    assert bad["dq"].status == "fail" and bad["dk"].status == "fail"


def _status(rows):
    return {(r.check, r.output): r.status for r in rows}


def test_invariants_catch_planted_errors(fla040_root):
    ref = reference_implementation(fla040_root)
    invs = [i for i in rwkv7_invariants() if i.group in ("token_shift", "RWKV7Attention")
            and i.name in ("ref+grads", "prefill+decode==full")]
    good = inv.run_invariants(ref, fla040_root, invs, FLA040, quick=True)
    assert good and not [r for r in good if r.failed], [(r.check, r.output, r.message) for r in good if r.failed]

    shift = ref.resolve(TOKEN_SHIFT)

    def forgets_cache(x, cu_seqlens=None, cache=None, output_cache=False):
        return shift(x, cu_seqlens, cache=None, output_cache=output_cache)
    rows = inv.run_invariants(ref.with_overrides("forgets-cache", {TOKEN_SHIFT: forgets_cache}), fla040_root,
                              [i for i in invs if i.group == "token_shift"], FLA040, quick=False)
    failed = {r.case for r in rows if r.failed}
    assert failed and all("cache=True" in c for c in failed)

    Layer = ref.resolve(RWKV7_LAYER)

    class ForgetsState(Layer):          # the cache is written but never read back
        def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False, **kw):
            o, a, _, v = super().forward(hidden_states, attention_mask, None, use_cache, **kw)
            return o, a, past_key_values, v
    rows = inv.run_invariants(ref.with_overrides("forgets-state", {RWKV7_LAYER: ForgetsState}), fla040_root,
                              [i for i in invs if i.name == "prefill+decode==full"], FLA040, quick=True)
    assert [r for r in rows if r.failed]


def test_rwkv7_invariants_are_selected_by_their_layer():
    invs = FLA040.invariants()
    rwkv = inv.select(invs, None, "RWKV7Attention")
    assert {i.group for i in rwkv} >= {"chunk_dplr_delta_rule", "fused_recurrent_dplr_delta_rule", "chunk_rwkv7",
                                       "fused_mul_recurrent_rwkv7", "token_shift", "RWKV7Attention"}
    kda = inv.select(invs, None, "KimiDeltaAttention")
    assert not {i.group for i in kda} & {"RWKV7Attention", "chunk_dplr_delta_rule", "token_shift"}
