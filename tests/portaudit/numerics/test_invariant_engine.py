"""The invariant engine catches planted errors and passes a correct implementation.

Implementations are built from fla's own naive references (loaded by file path from the fetched
0.4.0 tree, run in float64), so these tests do not depend on myfla. Each planted error must fail
the invariant that targets it.
"""

from __future__ import annotations

import pytest
import torch

from portaudit.numerics import invariants as engine
from portaudit.numerics.fla040 import REGISTRY as FLA040
from portaudit.numerics.fla040 import invariants as inv
from portaudit.numerics.fla040.apis import KDA_CHUNK
from portaudit.numerics.fla040.reference import l2n, reference_implementation
from portaudit.numerics.results import FAIL, PASS

LONG = dict(B=1, T=100, H=1, K=16, V=16, h0=True)      # crosses a 64-token chunk boundary
VARLEN = dict(B=1, T=100, H=1, K=16, V=16, h0=True, cu=[0, 1, 30, 95, 100])
L2 = dict(B=1, T=20, H=1, K=16, V=8, h0=True)


@pytest.fixture(scope="module")
def good(fla040_root):
    return reference_implementation(fla040_root, fp64=True)


def _invariants():
    return {
        "naive": engine.Invariant("naive", "chunk_kda", [KDA_CHUNK], [LONG], inv.inv_naive("kda", "chunk", False)),
        "chunk==fused_recurrent": engine.Invariant("chunk==fused_recurrent", "chunk_kda",
                                                [KDA_CHUNK, inv.FAMILIES["kda"]["fused"]], [LONG],
                                                inv.inv_chunk_vs_fused("kda")),
        "varlen==slices": engine.Invariant("varlen==slices", "chunk_kda", [KDA_CHUNK], [VARLEN],
                                        inv.inv_varlen("kda", "chunk", False)),
        "l2norm_in_kernel==explicit": engine.Invariant("l2norm_in_kernel==explicit", "chunk_kda", [KDA_CHUNK], [L2],
                                                    inv.inv_l2_in_kernel("kda")),
    }


def _status(impl, root):
    rows = engine.run_invariants(impl, root, list(_invariants().values()), FLA040)
    out = {}
    for r in rows:
        out[r.check] = FAIL if (r.failed or out.get(r.check) == FAIL) else PASS
    return out, rows


def test_correct_reference_passes_every_invariant(good, fla040_root):
    status, rows = _status(good, fla040_root)
    assert set(status.values()) == {PASS}, [(r.check, r.output, r.rms_ratio, r.message) for r in rows if r.failed]


def _planted(good, name, fn):
    return good.with_overrides(name, {KDA_CHUNK: fn})


def test_wrong_gate_sign_fails_naive(good, fla040_root):
    base = good.resolve(KDA_CHUNK)

    def chunk_kda(q, k, v, g, beta, **kw):
        return base(q, k, v, -g, beta, **kw)
    status, _ = _status(_planted(good, "wrong-gate-sign", chunk_kda), fla040_root)
    assert status["naive"] == FAIL
    assert status["chunk==fused_recurrent"] == FAIL


def test_state_not_carried_across_chunks_fails_naive(good, fla040_root):
    base = good.resolve(KDA_CHUNK)

    def chunk_kda(q, k, v, g, beta, scale=None, initial_state=None, output_final_state=False,
                  use_qk_l2norm_in_kernel=False, cu_seqlens=None, **kw):
        if cu_seqlens is not None:
            return base(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                        output_final_state=output_final_state, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
                        cu_seqlens=cu_seqlens)
        outs, state = [], initial_state
        for s in range(0, q.shape[1], 64):
            o, ht = base(q[:, s:s + 64], k[:, s:s + 64], v[:, s:s + 64], g[:, s:s + 64], beta[:, s:s + 64],
                         scale=scale, initial_state=initial_state if s == 0 else None, output_final_state=True,
                         use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)
            outs.append(o)
            state = ht
        return torch.cat(outs, 1), (state if output_final_state else None)
    status, _ = _status(_planted(good, "no-state-carry", chunk_kda), fla040_root)
    assert status["naive"] == FAIL
    assert status["chunk==fused_recurrent"] == FAIL
    assert status["l2norm_in_kernel==explicit"] == PASS   # T=20: a single chunk, nothing to carry


def test_off_by_one_cu_seqlens_fails_varlen(good, fla040_root):
    base = good.resolve(KDA_CHUNK)

    def chunk_kda(q, k, v, g, beta, cu_seqlens=None, **kw):
        if cu_seqlens is not None:
            cu_seqlens = cu_seqlens.clone()
            cu_seqlens[1:-1] += 1
        return base(q, k, v, g, beta, cu_seqlens=cu_seqlens, **kw)
    status, _ = _status(_planted(good, "cu-off-by-one", chunk_kda), fla040_root)
    assert status["varlen==slices"] == FAIL
    assert status["naive"] == PASS
    assert status["chunk==fused_recurrent"] == PASS


def test_missing_l2norm_backward_fails_l2_invariant_on_gradients_only(good, fla040_root):
    base = good.resolve(KDA_CHUNK)

    def chunk_kda(q, k, v, g, beta, use_qk_l2norm_in_kernel=False, **kw):
        if use_qk_l2norm_in_kernel:
            # forward normalises, backward passes gradients straight through (no l2norm_bwd)
            q = q + (l2n(q).to(q.dtype) - q).detach()
            k = k + (l2n(k).to(k.dtype) - k).detach()
        return base(q, k, v, g, beta, **kw)
    status, rows = _status(_planted(good, "no-l2norm-bwd", chunk_kda), fla040_root)
    assert status["l2norm_in_kernel==explicit"] == FAIL
    l2rows = {r.output: r.status for r in rows if r.check == "l2norm_in_kernel==explicit"}
    assert l2rows["o"] == PASS and l2rows["ht"] == PASS
    assert l2rows["dq"] == FAIL and l2rows["dk"] == FAIL
    assert status["naive"] == PASS


def test_missing_api_is_reported_not_skipped(fla040_root):
    from portaudit.numerics.impl import MappingImplementation
    empty = MappingImplementation("empty", {})
    rows = engine.run_invariants(empty, fla040_root, [_invariants()["naive"]], FLA040)
    assert [r.status for r in rows] == ["missing"]
    assert "fla.ops.kda.chunk.chunk_kda" in rows[0].message


def test_an_exception_is_an_error_row(good, fla040_root):
    def chunk_kda(*a, **k):
        raise RuntimeError("boom")
    rows = engine.run_invariants(_planted(good, "raises", chunk_kda), fla040_root, [_invariants()["naive"]],
                                 FLA040)
    assert rows[0].status == "error" and "boom" in rows[0].message


def test_declared_matrix_covers_the_shapes_design_asks_for():
    cases = inv.DELTA_CASES + inv.VARLEN_CASES
    assert any(c["T"] < 64 for c in cases)
    assert any(c["T"] % 64 and c["T"] > 64 for c in cases)
    assert any(c["T"] == 1 for c in cases)
    assert any(c.get("cu") and 1 in [b - a for a, b in zip(c["cu"][:-1], c["cu"][1:])] for c in cases)
    assert any(c["K"] != c["V"] for c in cases)
    assert any(c["K"] & (c["K"] - 1) for c in cases)
    assert any(c["H"] == 1 for c in cases)
    assert {c["h0"] for c in cases} == {True, False}


def test_hypothesis_cases_replay_from_seed():
    assert inv.hypothesis_cases(5, 123) == inv.hypothesis_cases(5, 123)
    assert inv.hypothesis_cases(5, 123) != inv.hypothesis_cases(5, 124)


def test_select_rejects_unknown_op_and_layer():
    from portaudit.errors import UsageError
    invs = inv.declared_invariants()
    with pytest.raises(UsageError, match="unknown op"):
        engine.select(invs, ["chunk_nope"])
    with pytest.raises(UsageError, match="unknown layer"):
        engine.select(invs, None, "Mamba")
    kda = engine.select(invs, None, "KimiDeltaAttention")
    assert {i.group for i in kda} >= {"chunk_kda", "fused_kda_gate", "KimiDeltaAttention", "ShortConvolution",
                                      "l2norm", "solve_tril"}
    assert not {i.group for i in kda} & {"GatedDeltaNet", "chunk_gated_delta_rule", "RMSNorm"}


def _layer_invariants(path):
    return {
        "masked==unpadded": engine.Invariant("masked==unpadded", "L", [path], [dict(B=2, T=20, pad=[0, 6])],
                                          inv.inv_layer_masked(path)),
        "prefill+decode==full": engine.Invariant("prefill+decode==full", "L", [path], [dict(B=1, T=9, prefill=4)],
                                              inv.inv_layer_decode(path)),
    }


def _layer_status(impl, root, path):
    rows = engine.run_invariants(impl, root, list(_layer_invariants(path).values()), FLA040)
    out = {}
    for r in rows:
        out[r.check] = FAIL if (r.failed or out.get(r.check) == FAIL) else PASS
    return out, rows


@pytest.mark.parametrize("path", ["fla.layers.kda.KimiDeltaAttention", "fla.layers.gated_deltanet.GatedDeltaNet"])
def test_layer_invariants_pass_for_fla_layer_code_and_catch_planted_errors(good, fla040_root, path):
    status, rows = _layer_status(good, fla040_root, path)
    assert set(status.values()) == {PASS}, [(r.check, r.output, r.message) for r in rows if r.failed]
    Layer = good.resolve(path)

    class IgnoresMask(Layer):            # pads are attended to: no unpad/repad
        def forward(self, hidden_states, attention_mask=None, **kw):
            return super().forward(hidden_states, **kw)

    class ForgetsState(Layer):           # the cache is written but never read back
        def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False, **kw):
            return super().forward(hidden_states, attention_mask, None, use_cache, **kw)[:2] + (past_key_values,)

    status, _ = _layer_status(good.with_overrides("ignores-mask", {path: IgnoresMask}), fla040_root, path)
    assert status == {"masked==unpadded": FAIL, "prefill+decode==full": PASS}
    status, _ = _layer_status(good.with_overrides("forgets-state", {path: ForgetsState}), fla040_root, path)
    assert status == {"masked==unpadded": PASS, "prefill+decode==full": FAIL}


def test_real_fla_gets_tf32_bounds_only_where_its_kernels_use_tf32_dots():
    from portaudit.numerics.fla040.tolerances import invariant_rules
    from portaudit.numerics.registry import get_implementation
    from portaudit.numerics.tolerances import ToleranceTable

    fla_precision = get_implementation("fla", FLA040).precision
    ours_precision = get_implementation("myfla", FLA040).precision
    assert (fla_precision, ours_precision) == ("tf32", "fp32")
    fla, ours = ToleranceTable(invariant_rules(fla_precision)), ToleranceTable(invariant_rules(ours_precision))
    # chunk kernels and the layers built on them: TF32 bounds for fla, fp32 bounds for the port
    assert fla.lookup("chunk_kda", "o", "fp32").value == 1e-3
    assert fla.lookup("chunk_gated_delta_rule", "dq", "fp32").value == 5e-3
    assert fla.lookup("KimiDeltaAttention", "dparam.A_log", "fp32").value == 5e-2
    assert ours.lookup("chunk_kda", "o", "fp32").value == 1e-5
    assert ours.lookup("KimiDeltaAttention", "o", "fp32").value == 2e-5
    # recurrent and elementwise kernels keep the strict bounds for fla too
    assert fla.lookup("fused_recurrent_kda", "o", "fp32").value == 1e-5
    assert fla.lookup("l2norm", "y", "fp32").value == 1e-5


@pytest.mark.parametrize("path", ["fla.layers.utils.index_first_axis", "fla.layers.utils.pad_input"])
def test_index_gradcheck_cases_build_their_indices_on_the_inputs_device(path):
    # a CUDA run once failed here: indices on the CPU, inputs on the GPU ('meta' stands in for cuda)
    from portaudit.numerics.fla040.invariants import GRADCHECK_FUNCTIONS
    spec, call = GRADCHECK_FUNCTIONS[path]
    seen = []

    def recorder(t, indices, *rest):
        seen.append(indices.device)
        return t

    call(recorder, *[torch.empty(*shape, device="meta") for shape, _, _ in spec])
    assert seen == [torch.device("meta")]


@pytest.mark.parametrize("path, method", [("fla.modules.fused_norm_gate.FusedRMSNormGated", "__init__"),
                                          ("fla.modules.layernorm.RMSNorm", "__init__"),
                                          ("fla.modules.convolution.causal_conv1d", None)])
def test_reference_defaults_are_fla_s(fla040_root, path, method):
    """The eps=default norm cases compare against the reference's defaults: they must be fla's own."""
    import inspect

    from portaudit.numerics.upstream_code import upstream_signature
    ours = reference_implementation(fla040_root).resolve(path)
    ours_sig = inspect.signature(ours)
    fla_sig = upstream_signature(fla040_root, path, method)
    for name, p in fla_sig.parameters.items():
        if p.default is not inspect.Parameter.empty and not hasattr(p.default, "text"):
            assert ours_sig.parameters[name].default == p.default, name
