"""chunk_dplr_delta_rule / fused_recurrent_dplr_delta_rule against fla's naive DPLR references
(``dplr_recurrence``, ``dplr_chunkwise``, loaded by file path from fla 0.4.0 and run in fp64, with fp64
autograd for the gradients), plus the invariants: chunk == fused_recurrent, varlen == per-sequence
slices, resume == full run at mid-chunk splits, the chunk size does not change the result, and fla's
helper functions chained in fla's order give the autograd function's outputs and gradients."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from myfla.ops.generalized_delta_rule import chunk_dplr_delta_rule, fused_recurrent_dplr_delta_rule
from myfla.ops.generalized_delta_rule.dplr import chunk as dplr_chunk
from myfla.ops.generalized_delta_rule.dplr.chunk_A_bwd import chunk_dplr_bwd_dqk_intra
from myfla.ops.generalized_delta_rule.dplr.chunk_A_fwd import chunk_dplr_fwd_intra
from myfla.ops.generalized_delta_rule.dplr.chunk_h_bwd import chunk_dplr_bwd_dhu
from myfla.ops.generalized_delta_rule.dplr.chunk_h_fwd import chunk_dplr_fwd_h
from myfla.ops.generalized_delta_rule.dplr.chunk_o_bwd import chunk_dplr_bwd_dAu, chunk_dplr_bwd_dv, chunk_dplr_bwd_o
from myfla.ops.generalized_delta_rule.dplr.chunk_o_fwd import chunk_dplr_fwd_o
from myfla.ops.generalized_delta_rule.dplr.intra_blocks import DPLRIntraBlocks
from myfla.ops.generalized_delta_rule.dplr.wy_fast_bwd import chunk_dplr_bwd_wy
from myfla.ops.generalized_delta_rule.dplr.wy_fast_fwd import prepare_wy_repr_fwd
from myfla.ops.rwkv6.chunk import chunk_rwkv6_fwd_cumsum
from portaudit.numerics.fla040.reference_rwkv7 import DPLRReference
from tests.numerics import assert_rms

# fp32 outputs/states within 1e-5 of the fp64 oracle (RMS ratio), gradients within 1e-4
O_TOL, G_TOL = 1e-5, 1e-4
NAMES = ["dq", "dk", "dv", "da", "db", "dgk", "dh0"]

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def ref(fla040_root):
    return DPLRReference(fla040_root, fp64=True)


def make_inputs(B, T, H, K, V, h0=True, normalizer=1.0, mask_p=0.0, N=None, seed=0, rwkv=False):
    """fla's test recipe: a = normalize(rand), b = -a, gk = logsigmoid(randn) / normalizer (masked to 0
    with probability mask_p); with ``rwkv`` the layer's recipe instead: a = -kk, b = kk * sigmoid,
    w = -exp(-1/2) sigmoid."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, H, V, generator=gen)
    if rwkv:
        kk = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
        a, b = -kk, kk * torch.rand(B, T, H, K, generator=gen)
        gk = -0.6065306597126334 * torch.randn(B, T, H, K, generator=gen).sigmoid()
    else:
        a = F.normalize(torch.rand(B, T, H, K, generator=gen), p=2, dim=-1)
        b = -a
        gk = F.logsigmoid(torch.randn(B, T, H, K, generator=gen)) / normalizer
        if mask_p:
            gk = gk * (torch.rand(B, T, H, K, generator=gen) > mask_p)
    s0 = torch.randn(N if N is not None else B, H, K, V, generator=gen) if h0 else None
    return q, k, v, a, b, gk, s0


def oracle(ref, xs, scale, do=None, dht=None, cu_seqlens=None):
    """fp64 outputs and (with ``do``) gradients of fla's naive recurrence."""
    leaves = [None if x is None else x.detach().double().requires_grad_() for x in xs]
    o, S = ref(*leaves[:6], scale=scale, initial_state=leaves[6], cu_seqlens=cu_seqlens)
    grads = None
    if do is not None:
        ((o * do.double()).sum() + (S * dht.double()).sum()).backward()
        grads = [None if x is None else x.grad for x in leaves]
    return o.detach(), S.detach(), grads


def run_chunk(xs, do, dht, **kw):
    leaves = [None if x is None else x.detach().clone().requires_grad_() for x in xs]
    o, S = chunk_dplr_delta_rule(*leaves[:6], initial_state=leaves[6], output_final_state=True, **kw)
    ((o.float() * do).sum() + (S * dht).sum()).backward()
    for x, leaf in zip(xs, leaves):
        if x is not None:
            assert torch.equal(x, leaf.detach()), "chunk_dplr_delta_rule modified an input"
    return o, S, [None if x is None else x.grad for x in leaves]


CHUNK_CASES = [
    # B, T, H, K, V, h0, scale, normalizer, mask_p, rwkv
    (1, 1, 1, 32, 32, True, None, 1.0, 0.0, False),
    (2, 17, 3, 64, 32, False, 0.1, 1.0, 0.0, False),
    (1, 63, 1, 60, 64, True, 1.0, 1.0, 0.0, False),          # K not a power of two
    (1, 64, 2, 32, 48, True, None, 0.1, 0.5, False),         # weak decay, masked gates
    (2, 65, 1, 100, 32, False, 1.0, 10.0, 0.0, False),       # strong decay: bisected intra blocks
    (1, 200, 2, 32, 64, True, 0.5, 1.0, 0.3, False),
    (2, 128, 1, 32, 32, True, 1.0, 1.0, 0.0, True),          # RWKV-7's inputs, no padding
    (1, 150, 2, 64, 64, True, 1.0, 1.0, 0.0, True),
]


@pytest.mark.parametrize("B,T,H,K,V,h0,scale,normalizer,mask_p,rwkv", CHUNK_CASES)
def test_chunk_matches_fla_naive_recurrence(ref, B, T, H, K, V, h0, scale, normalizer, mask_p, rwkv):
    xs = make_inputs(B, T, H, K, V, h0=h0, normalizer=normalizer, mask_p=mask_p, rwkv=rwkv)
    do, dht = torch.randn(B, T, H, V), torch.randn(B, H, K, V)
    o_ref, S_ref, g_ref = oracle(ref, xs, scale, do, dht)
    o, S, grads = run_chunk(xs, do, dht, scale=scale)
    assert o.dtype == torch.float32 and S.dtype == torch.float32
    assert_rms("o", o_ref, o, O_TOL)
    assert_rms("ht", S_ref, S, O_TOL)
    for name, r, g in zip(NAMES, g_ref, grads):
        if r is not None:
            assert_rms(name, r, g, G_TOL)


def test_chunk_matches_fla_naive_chunkwise(ref):
    """fla's second oracle, the chunked naive form (it needs T to be a multiple of its chunk)."""
    xs = make_inputs(2, 96, 2, 32, 32)
    o_ref, S_ref = ref(*xs[:6], scale=0.3, initial_state=xs[6], chunk_size=32)
    o, S = chunk_dplr_delta_rule(*xs[:6], scale=0.3, initial_state=xs[6], output_final_state=True)
    assert_rms("o", o_ref, o, O_TOL)
    assert_rms("ht", S_ref, S, O_TOL)


@pytest.mark.parametrize("B,T,normalizer", [(2, 1, 1.0), (2, 37, 1.0), (1, 37, 1.0), (2, 130, 10.0), (2, 64, 0.1)])
def test_fused_recurrent_matches_fla_naive(ref, B, T, normalizer):
    xs = make_inputs(B, T, 2, 48, 32, normalizer=normalizer)
    o_ref, S_ref = ref(*xs[:6], scale=None, initial_state=xs[6])
    kept = [x.clone() for x in xs]
    o, S = fused_recurrent_dplr_delta_rule(*xs[:6], initial_state=xs[6], output_final_state=True)
    assert all(torch.equal(x, y) for x, y in zip(xs, kept)), "fused_recurrent modified an input"
    assert o.dtype == torch.float32 and S.dtype == torch.float32
    assert_rms("o", o_ref, o, O_TOL)
    assert_rms("ht", S_ref, S, O_TOL)


def test_fused_recurrent_reverse(ref):
    xs = make_inputs(1, 50, 2, 32, 32)
    o_ref, S_ref = ref(*xs[:6], scale=0.5, initial_state=xs[6], reverse=True)
    o, S = fused_recurrent_dplr_delta_rule(*xs[:6], scale=0.5, initial_state=xs[6], output_final_state=True,
                                           reverse=True)
    assert_rms("o", o_ref, o, O_TOL)
    assert_rms("ht", S_ref, S, O_TOL)


def test_fused_recurrent_has_no_backward():
    xs = [x.requires_grad_() for x in make_inputs(1, 8, 1, 16, 16)]
    o, _ = fused_recurrent_dplr_delta_rule(*xs[:6], initial_state=xs[6])
    with pytest.raises(NotImplementedError, match="only for inference"):
        o.sum().backward()


@pytest.mark.parametrize("T", [1, 40, 200])
def test_chunk_equals_fused_recurrent(T):
    xs = make_inputs(2, T, 2, 32, 32, rwkv=True)
    o1, S1 = chunk_dplr_delta_rule(*xs[:6], scale=1.0, initial_state=xs[6], output_final_state=True)
    o2, S2 = fused_recurrent_dplr_delta_rule(*xs[:6], scale=1.0, initial_state=xs[6], output_final_state=True)
    assert_rms("o", o2, o1, 2e-6)
    assert_rms("ht", S2, S1, 2e-6)


CU_CASES = [[0, 15], [0, 1, 65, 70, 200], [0, 64, 128], [0, 3, 3, 130, 131]]


@pytest.mark.parametrize("cu", CU_CASES)
def test_varlen_matches_per_sequence(ref, cu):
    """cu_seqlens (length-1 and empty sequences included) against per-sequence oracle runs, with
    per-sequence initial states and gradients."""
    N, T = len(cu) - 1, cu[-1]
    xs = make_inputs(1, T, 2, 32, 32, N=N)
    cu_t = torch.tensor(cu, dtype=torch.int32)
    do, dht = torch.randn(1, T, 2, 32), torch.randn(N, 2, 32, 32)
    o_ref, S_ref, g_ref = oracle(ref, xs, None, do, dht, cu_seqlens=cu_t)
    o, S, grads = run_chunk(xs, do, dht, cu_seqlens=cu_t)
    assert_rms("o", o_ref, o, O_TOL)
    assert_rms("ht", S_ref, S, O_TOL)
    for name, r, g in zip(NAMES, g_ref, grads):
        assert_rms(name, r, g, G_TOL)


@pytest.mark.parametrize("split", [1, 37, 64, 100])
def test_resume_equals_full_run(split):
    """A prefix with output_final_state, then the rest from that state == one full run."""
    xs = make_inputs(2, 150, 2, 32, 32, rwkv=True)
    o, S = chunk_dplr_delta_rule(*xs[:6], scale=1.0, initial_state=xs[6], output_final_state=True)
    o1, S1 = chunk_dplr_delta_rule(*(x[:, :split] for x in xs[:6]), scale=1.0, initial_state=xs[6],
                                   output_final_state=True)
    o2, S2 = chunk_dplr_delta_rule(*(x[:, split:] for x in xs[:6]), scale=1.0, initial_state=S1,
                                   output_final_state=True)
    assert_rms("o", o, torch.cat([o1, o2], 1), 2e-6)
    assert_rms("ht", S, S2, 2e-6)
    # the recurrent op resumes from the chunk op's state (the layer's prefill -> decode hand-off)
    o3, S3 = fused_recurrent_dplr_delta_rule(*(x[:, split:] for x in xs[:6]), scale=1.0, initial_state=S1,
                                             output_final_state=True)
    assert_rms("o", o[:, split:], o3, 2e-6)
    assert_rms("ht", S, S3, 2e-6)


@pytest.mark.parametrize("chunk_size", [16, 64])
def test_chunk_size_does_not_change_the_result(monkeypatch, chunk_size):
    """The autograd function runs on CHUNK_SIZE-token chunks; fla's 16 (and 64) give the same values."""
    xs = make_inputs(1, 100, 2, 32, 32, normalizer=0.5)
    do, dht = torch.randn(1, 100, 2, 32), torch.randn(1, 2, 32, 32)
    o, S, grads = run_chunk(xs, do, dht)
    monkeypatch.setattr(dplr_chunk, "CHUNK_SIZE", chunk_size)
    o2, S2, grads2 = run_chunk(xs, do, dht)
    assert_rms("o", o, o2, 2e-6)
    assert_rms("ht", S, S2, 2e-6)
    for name, g, g2 in zip(NAMES, grads, grads2):
        assert_rms(name, g, g2, 1e-5)


def test_fla_call_sequence_of_the_helpers():
    """fla's chunk_dplr_fwd and ChunkDPLRDeltaRuleFunction.backward, spelled out with the ported
    token-layout helpers at fla's chunk size 16, give the autograd function's outputs and gradients."""
    B, T, H, K, V = 1, 50, 2, 32, 16
    BT, scale = 16, 0.7
    cu = torch.tensor([0, 20, 50], dtype=torch.int32)
    q, k, v, a, b, gk, h0 = make_inputs(B, T, H, K, V, N=2)
    do, dht = torch.randn(B, T, H, V), torch.randn(2, H, K, V)

    gi, ge = chunk_rwkv6_fwd_cumsum(gk, BT, cu_seqlens=cu)
    A_ab, A_qk, A_ak, A_qb, qg, kg, ag, bg = chunk_dplr_fwd_intra(q, k, a, b, gi, ge, scale, BT, cu_seqlens=cu)
    w, u, A_ab_inv = prepare_wy_repr_fwd(ag, v, A_ak, A_ab, cu, chunk_size=BT)
    h, v_new, final = chunk_dplr_fwd_h(kg, v, w, u, bg, gi, initial_state=h0, output_final_state=True,
                                        cu_seqlens=cu, chunk_size=BT)
    o = chunk_dplr_fwd_o(qg, v, v_new, A_qk, A_qb, h, cu_seqlens=cu, chunk_size=BT)

    dv_new_intra, dA_qk, dA_qb = chunk_dplr_bwd_dAu(v, v_new, do, A_qb, scale, cu_seqlens=cu, chunk_size=BT)
    dh, dh0, dv_new = chunk_dplr_bwd_dhu(qg, bg, w, gi, h0, dht, do, dv_new_intra, cu_seqlens=cu, chunk_size=BT)
    dv = chunk_dplr_bwd_dv(A_qk, kg, do, dh, cu_seqlens=cu, chunk_size=BT)
    dqg, dkg, dw, dbg, dgk_last = chunk_dplr_bwd_o(kg, bg, v, v_new, gi, do, h, dh, dv_new, w, cu_seqlens=cu,
                                                   chunk_size=BT, scale=scale)
    dA_ab, dA_ak, dv, dag = chunk_dplr_bwd_wy(A_ab_inv, A_ak, v, ag, dw, dv_new, dv, cu, BT)
    dq, dk, da, db, dgk = chunk_dplr_bwd_dqk_intra(q, k, a, b, gi, ge, dA_qk, dA_qb, dA_ak, dA_ab, dqg, dkg,
                                                   dag, dbg, dgk_last, scale=scale, cu_seqlens=cu, chunk_size=BT)
    assert h.shape == (B, 2 + 2, H, K, V) and dgk_last.shape == (B, 4, H, K)
    assert A_ab.dtype == torch.float32 and dgk.dtype == torch.float32

    xs = (q, k, v, a, b, gk, h0)
    o2, S2, grads = run_chunk(xs, do, dht, scale=scale, cu_seqlens=cu)
    assert_rms("o", o2, o, 2e-6)
    assert_rms("ht", S2, final, 2e-6)
    for name, g, g2 in zip(NAMES, grads, (dq, dk, dv, da, db, dgk, dh0)):
        assert_rms(name, g, g2, 1e-5)


def test_intra_blocks_match_pairwise_for_any_gate_range():
    """The bisection / direct split of the intra-chunk products against fla's pairwise formula,
    from gates that fit one block to gates that need single-token blocks."""
    gen = torch.Generator().manual_seed(1)
    for normalizer, expect_split in [(4.0, False), (0.02, True)]:
        q, k, a, b = (torch.randn(3, 64, 16, generator=gen, dtype=torch.float64) for _ in range(4))
        g = F.logsigmoid(torch.randn(3, 64, 16, generator=gen, dtype=torch.float64)) / normalizer
        gi = g.cumsum(-2)
        ge = gi - g
        blocks = DPLRIntraBlocks(gi, ge)
        assert (blocks.base < 64) == expect_split

        def pairwise(X, Gr, Y, diag):
            mask = torch.ones(64, 64, dtype=torch.bool).tril(0 if diag else -1)
            e = (Gr.unsqueeze(-2) - gi.unsqueeze(-3)).masked_fill(~mask.unsqueeze(-1), float('-inf')).exp()
            return torch.einsum('...id,...jd,...ijd->...ij', X, Y, e)
        expected = [pairwise(q, gi, k, True), pairwise(q, gi, b, True), pairwise(a, ge, k, False),
                    pairwise(a, ge, b, False)]
        for got, want in zip(blocks.scores(q, k, a, b), expected):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_low_precision_inputs():
    xs = make_inputs(1, 80, 2, 32, 32, rwkv=True)
    o32, S32 = chunk_dplr_delta_rule(*xs[:6], scale=1.0, initial_state=xs[6], output_final_state=True)
    for dtype in (torch.bfloat16, torch.float16):
        lp = [x.to(dtype) for x in xs[:6]]
        o, S = chunk_dplr_delta_rule(*lp, scale=1.0, initial_state=xs[6], output_final_state=True)
        assert o.dtype == dtype and S.dtype == torch.float32
        assert_rms("o", o32, o, 3e-2)
        assert_rms("ht", S32, S, 3e-2)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("T,rwkv", [(63, False), (150, True)])
def test_low_precision_gradients(ref, dtype, tol, T, rwkv):
    """Gradients from half-precision inputs against fla's naive recurrence in fp64 (fla's own
    test_chunk recipe: scale 1, logsigmoid gates, whose chunk-local sums reach ~-30). fp16 keeps the
    gated keys k exp(g_last - gi) only down to 6e-5, so its passes take the blocked intra forms: with
    the single-exponential decay form, fp16 gradients of q, k, a, b, g were off by ~0.5 RMS (fla
    0.4.0's tests/ops/test_dplr_delta.py::test_chunk found it)."""
    xs = make_inputs(1, T, 2, 64, 64, rwkv=rwkv)
    lp = [x.to(dtype) for x in xs[:6]] + [xs[6]]
    gen = torch.Generator().manual_seed(1)
    do, dht = torch.randn(1, T, 2, 64, generator=gen), torch.randn(1, 2, 64, 64, generator=gen)
    o_ref, S_ref, g_ref = oracle(ref, [x.double() for x in lp[:6]] + [xs[6]], 1.0, do, dht)
    o, S, grads = run_chunk(lp, do, dht, scale=1.0)
    assert_rms("o", o_ref, o, tol)
    assert_rms("ht", S_ref, S, tol)
    for name, want, got in zip(("dq", "dk", "dv", "da", "db", "dg", "dh0"), g_ref, grads):
        assert_rms(name, want, got, tol)


def test_input_checks():
    xs = make_inputs(2, 10, 1, 16, 16)
    cu = torch.tensor([0, 4, 10])
    with pytest.raises(ValueError, match="The batch size is expected to be 1 rather than 2"):
        chunk_dplr_delta_rule(*xs[:6], cu_seqlens=cu)
    xs1 = make_inputs(1, 10, 1, 16, 16, N=3)
    with pytest.raises(ValueError, match=r"i\.e\., 2 rather than 3"):
        chunk_dplr_delta_rule(*xs1[:6], initial_state=xs1[6], cu_seqlens=cu)
    with pytest.raises(ValueError, match=r"i\.e\., 2 rather than 3"):
        fused_recurrent_dplr_delta_rule(*xs1[:6], initial_state=xs1[6], cu_seqlens=cu)
    with pytest.raises(DeprecationWarning, match="head_first is deprecated"):
        chunk_dplr_delta_rule(*xs[:6], head_first=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chunk_dplr_delta_rule(*(x[:, :1] for x in make_inputs(1, 4, 2, 16, 16)[:6]))
    messages = [str(w.message) for w in caught]
    assert any("format mismatch" in m for m in messages)
    assert any("does not support float32" in m for m in messages)


def _gate_modes(gk, chunk_size=dplr_chunk.CHUNK_SIZE):
    """The intra-block modes ('decay', 'single', 'split') of the chunks of ``gk`` [B, T, H, K]."""
    gi, ge = chunk_rwkv6_fwd_cumsum(gk, chunk_size)
    B, T, H, K = gk.shape
    blocks = DPLRIntraBlocks(gi[:, :T - T % chunk_size].reshape(-1, chunk_size, H, K).transpose(1, 2),
                             ge[:, :T - T % chunk_size].reshape(-1, chunk_size, H, K).transpose(1, 2))
    return 'decay' if blocks.decay else ('single' if blocks.single else 'split')


@pytest.mark.parametrize("case,scale", [("rwkv", 0.7), ("positive", 0.5), ("strong", None)])
def test_every_gate_mode_matches_fla_naive(ref, case, scale):
    """Decaying gates within range take the exp(gi) / reciprocal factorisation ('decay'), also with a
    scale; gates with positive entries the g_last factorisation ('single'); strong decays the bisected
    blocks ('split'): each against fla's naive recurrence (fp64 oracle, fp64 autograd gradients)."""
    B, T, H, K, V = 1, 96, 2, 32, 32
    if case == "rwkv":
        xs = make_inputs(B, T, H, K, V, rwkv=True)
        expected = 'decay'
    elif case == "positive":
        xs = list(make_inputs(B, T, H, K, V))
        xs[5] = 0.05 * torch.randn(B, T, H, K, generator=torch.Generator().manual_seed(3))
        expected = 'single'
    else:
        xs = make_inputs(B, T, H, K, V, normalizer=0.05)
        expected = 'split'
    assert _gate_modes(xs[5]) == expected
    do, dht = torch.randn(B, T, H, V), torch.randn(B, H, K, V)
    o_ref, S_ref, g_ref = oracle(ref, xs, scale, do, dht)
    o, S, grads = run_chunk(xs, do, dht, scale=scale)
    assert_rms("o", o_ref, o, O_TOL)
    assert_rms("ht", S_ref, S, O_TOL)
    for name, r, g in zip(NAMES, g_ref, grads):
        assert_rms(name, r, g, G_TOL)


@pytest.mark.parametrize("shape", [(1, 96, 2), (2, 70, 1)])
def test_saved_forward_parts_equal_the_recompute(monkeypatch, shape):
    """The backward from the forward's saved intermediates (default) and from fla's recompute
    (MYFLA_DPLR_SAVE_MB=0) give the same gradients; a second backward through a retained graph
    recomputes and agrees too. One unpadded sequence reads the inputs as grid views, the other shape
    converts them."""
    B, T, H = shape
    xs = make_inputs(B, T, H, 32, 32, rwkv=True)
    do, dht = torch.randn(B, T, H, 32), torch.randn(B, H, 32, 32)
    _, _, saved = run_chunk(xs, do, dht)
    monkeypatch.setattr(dplr_chunk, "SAVE_BYTES", 0)
    _, _, recomputed = run_chunk(xs, do, dht)
    for name, g, g2 in zip(NAMES, saved, recomputed):
        assert_rms(name, g, g2, 1e-6)
    monkeypatch.setattr(dplr_chunk, "SAVE_BYTES", 1 << 40)
    leaves = [x.detach().clone().requires_grad_() for x in xs]
    o, S = chunk_dplr_delta_rule(*leaves[:6], initial_state=leaves[6], output_final_state=True)
    loss = (o * do).sum() + (S * dht).sum()
    first = torch.autograd.grad(loss, leaves, retain_graph=True)
    second = torch.autograd.grad(loss, leaves)
    for name, g, g2 in zip(NAMES, first, second):
        assert_rms(name, g, g2, 1e-6)


def test_chunk_cumsum_matches_torch_cumsum():
    from myfla.ops.generalized_delta_rule.dplr.chunk_grid import chunk_cumsum
    x = torch.randn(3, 2, 32, 5, dtype=torch.float64)
    torch.testing.assert_close(chunk_cumsum(x), x.cumsum(-2))
    torch.testing.assert_close(chunk_cumsum(x, reverse=True), x.flip(-2).cumsum(-2).flip(-2))


def test_slabs_grow_with_cpu_threads(monkeypatch):
    """Slabs follow the KDA / GDN rule on CPUs (64 chunk-heads up to four threads, 16 per thread
    beyond); on GPUs the whole grid is one slab (a call's launches then do not grow with its length)."""
    for threads, chunks_per_slab in ((1, 16), (4, 16), (8, 32), (16, 64)):
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        slabs = dplr_chunk._slabs(256, 4, torch.device("cpu"))
        assert [sl.stop - sl.start for sl in slabs] == [chunks_per_slab] * (256 // chunks_per_slab)
    assert dplr_chunk._slabs(256, 4, torch.device("cuda")) == [slice(0, 256)]
    assert dplr_chunk._slabs(3, 1024, torch.device("cpu"))[-1] == slice(2, 3)   # at least a chunk a slab


@pytest.mark.parametrize("shape", [(1, 224, 2), (2, 150, 1)])
@pytest.mark.parametrize("save_bytes", [None, 0])
def test_slab_by_slab_passes_match_fla_naive(ref, monkeypatch, shape, save_bytes):
    """The forward and backward run slab by slab, carrying the state (forward) and its gradient
    (backward) from slab to slab. With slabs of a few chunk-heads (a shorter last slab included),
    the output and final state of a forward-only pass (slab-sized buffers), and the output, final
    state and gradients of a pass with backward (saved parts, or fla's recompute), match fla's naive
    recurrence in fp64. One shape reads its inputs as grid views of token layout, the other converts
    them (two padded sequences)."""
    monkeypatch.setattr(dplr_chunk, "slab_chunk_heads", lambda device: 3)
    if save_bytes is not None:
        monkeypatch.setattr(dplr_chunk, "SAVE_BYTES", save_bytes)
    B, T, H = shape
    assert len(dplr_chunk._slabs(-(-T // dplr_chunk.CHUNK_SIZE), B * H, torch.device("cpu"))) > 2
    xs = make_inputs(B, T, H, 32, 32, rwkv=True)
    do, dht = torch.randn(B, T, H, 32), torch.randn(B, H, 32, 32)
    o_ref, S_ref, g_ref = oracle(ref, xs, 1.0, do, dht)
    with torch.no_grad():
        o, S = chunk_dplr_delta_rule(*xs[:6], scale=1.0, initial_state=xs[6], output_final_state=True)
    assert_rms("o (forward only)", o_ref, o, O_TOL)
    assert_rms("ht (forward only)", S_ref, S, O_TOL)
    o, S, grads = run_chunk(xs, do, dht, scale=1.0)
    assert_rms("o", o_ref, o, O_TOL)
    assert_rms("ht", S_ref, S, O_TOL)
    for name, r, g in zip(NAMES, g_ref, grads):
        assert_rms(name, r, g, G_TOL)


def test_chunk_cumsum_of_a_token_layout_view():
    """``chunk_cumsum`` of a grid view of token layout (computed on the tokens, returned as a view)."""
    from myfla.ops.generalized_delta_rule.dplr.chunk_grid import chunk_cumsum
    x = torch.randn(1, 4 * 32, 3, 5, dtype=torch.float64)
    view = x.view(4, 32, 3, 5).transpose(1, 2)
    for reverse in (False, True):
        expected = view.flip(-2).cumsum(-2).flip(-2) if reverse else view.cumsum(-2)
        got = chunk_cumsum(view, reverse=reverse)
        assert got.shape == view.shape
        torch.testing.assert_close(got, expected)
