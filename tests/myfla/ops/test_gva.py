"""Grouped value attention (GVA) in the chunked ops, as fla 0.5.0 added it to ``chunk_gated_delta_rule``
and ``chunk_kda``: q, k with ``H`` heads; v, g, beta, states with ``HV = G * H``; value head ``i``
reads query/key head ``i // G``.

Oracle: fla's ``naive_recurrent_kda`` from the fetched fla 0.6.0 tree (identical to 0.5.0's), which
takes the GVA layout itself (``q.repeat_interleave(G, dim=2)``), run in fp64 (``as_fp64``) and
differentiated by fp64 autograd; for the gated delta rule its gate is ``g`` expanded over K. The
autograd functions are also gradchecked in fp64 with grouped heads.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from myfla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
from myfla.ops.kda import chunk_kda, fused_recurrent_kda
from tests.fla_refs import load_module
from tests.myfla.ops.test_gated_delta_rule import as_fp64
from tests.numerics import assert_rms

D = torch.float64


@pytest.fixture(scope="module")
def gva_ref(fla060_root):
    return as_fp64(load_module(fla060_root, "fla/ops/kda/naive.py")).naive_recurrent_kda


def l2(x):
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def gva_inputs(B, T, H, G, K, V, *, kda, l2_in_kernel, h0=True, N=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    HV = H * G
    q = torch.randn(B, T, H, K, generator=gen, dtype=D)
    k = torch.randn(B, T, H, K, generator=gen, dtype=D)
    if not l2_in_kernel:                      # raw randn keys make the delta rule explode
        k = F.normalize(k, dim=-1)
    v = torch.randn(B, T, HV, V, generator=gen, dtype=D)
    gshape = (B, T, HV, K) if kda else (B, T, HV)
    g = F.logsigmoid(torch.randn(*gshape, generator=gen, dtype=D) + (2.0 if kda else 0.0))
    beta = torch.rand(B, T, HV, generator=gen, dtype=D)
    state = torch.randn(N or B, HV, K, V, generator=gen, dtype=D) if h0 else None
    return q, k, v, g, beta, state


def oracle(ref, q, k, v, g, beta, h0, *, kda, l2_in_kernel, scale=None):
    """fp64 oracle per sequence of a [B, ...] batch (the naive reference has no varlen)."""
    if l2_in_kernel:
        q, k = l2(q), l2(k)
    gk = g if kda else g.unsqueeze(-1).expand(*g.shape, k.shape[-1])
    return ref(q, k, v, gk, beta, scale=scale, initial_state=h0, output_final_state=True)


CASES = [  # B, T, H, G, K, V, l2 in kernel, h0
    (2, 63, 1, 2, 32, 16, False, True),
    (1, 130, 2, 3, 16, 24, True, True),
    (2, 65, 2, 2, 24, 16, True, False),
    (1, 200, 4, 2, 64, 32, False, True),
]


@pytest.mark.parametrize("kda", [False, True], ids=["gdn", "kda"])
@pytest.mark.parametrize("B,T,H,G,K,V,use_l2,use_h0", CASES)
def test_chunk_gva_matches_fp64_oracle(gva_ref, kda, B, T, H, G, K, V, use_l2, use_h0):
    q, k, v, g, beta, h0 = gva_inputs(B, T, H, G, K, V, kda=kda, l2_in_kernel=use_l2, h0=use_h0)
    leaves = [x for x in (q, k, v, g, beta, h0) if x is not None]
    for x in leaves:
        x.requires_grad_()
    o_ref, ht_ref = oracle(gva_ref, q, k, v, g, beta, h0, kda=kda, l2_in_kernel=use_l2)
    do, dht = torch.randn_like(o_ref), torch.randn_like(ht_ref)
    ((o_ref * do).sum() + (ht_ref * dht).sum()).backward()

    ours = [x.detach().float().requires_grad_() for x in leaves]
    args = dict(zip(["q", "k", "v", "g", "beta", "initial_state"], ours))
    op = chunk_kda if kda else chunk_gated_delta_rule
    o, ht = op(**args, output_final_state=True, use_qk_l2norm_in_kernel=use_l2)
    assert o.shape == (B, T, H * G, V) and ht.shape == (B, H * G, K, V)
    assert_rms("o", o_ref, o, 1e-5)
    assert_rms("ht", ht_ref, ht, 1e-5)
    ((o * do.float()).sum() + (ht * dht.float()).sum()).backward()
    for name, ref, x in zip(["dq", "dk", "dv", "dg", "dbeta", "dh0"], leaves, ours):
        assert ref.grad.shape == x.grad.shape, name
        assert_rms(name, ref.grad, x.grad, 1e-4)


@pytest.mark.parametrize("kda", [False, True], ids=["gdn", "kda"])
def test_chunk_gva_varlen_matches_per_sequence_oracle(gva_ref, kda):
    """Packed sequences with per-sequence initial states, lengths 1 and across chunk boundaries."""
    lens = [1, 70, 33, 64]
    H, G, K, V = 2, 2, 16, 8
    T, N = sum(lens), len(lens)
    cu = torch.tensor([0] + lens).cumsum(0)
    q, k, v, g, beta, h0 = gva_inputs(1, T, H, G, K, V, kda=kda, l2_in_kernel=True, N=N, seed=3)
    leaves = [q, k, v, g, beta, h0]
    for x in leaves:
        x.requires_grad_()
    outs, states = [], []
    for i in range(N):
        s, e = cu[i].item(), cu[i + 1].item()
        o_i, h_i = oracle(gva_ref, q[:, s:e], k[:, s:e], v[:, s:e], g[:, s:e], beta[:, s:e], h0[i:i + 1],
                          kda=kda, l2_in_kernel=True)
        outs.append(o_i)
        states.append(h_i)
    o_ref, ht_ref = torch.cat(outs, 1), torch.cat(states, 0)
    do, dht = torch.randn_like(o_ref), torch.randn_like(ht_ref)
    ((o_ref * do).sum() + (ht_ref * dht).sum()).backward()

    ours = [x.detach().float().requires_grad_() for x in leaves]
    op = chunk_kda if kda else chunk_gated_delta_rule
    o, ht = op(*ours[:5], initial_state=ours[5], output_final_state=True, use_qk_l2norm_in_kernel=True,
               cu_seqlens=cu)
    assert_rms("o", o_ref, o, 1e-5)
    assert_rms("ht", ht_ref, ht, 1e-5)
    ((o * do.float()).sum() + (ht * dht.float()).sum()).backward()
    for name, ref, x in zip(["dq", "dk", "dv", "dg", "dbeta", "dh0"], leaves, ours):
        assert_rms(name, ref.grad, x.grad, 1e-4)


@pytest.mark.parametrize("kda", [False, True], ids=["gdn", "kda"])
def test_gva_resume_and_fused_recurrent_equal_full_chunk_run(kda):
    """prefix with output_final_state, then the rest from that state == one run; and the decode
    path (fused_recurrent, which transformers calls with the same GVA layout) == the chunk path."""
    q, k, v, g, beta, h0 = (x.float() if x is not None else None for x in
                            gva_inputs(2, 150, 2, 2, 16, 16, kda=kda, l2_in_kernel=True, seed=5))
    chunk = chunk_kda if kda else chunk_gated_delta_rule
    o, ht = chunk(q, k, v, g, beta, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)
    split = 77
    o1, h1 = chunk(q[:, :split], k[:, :split], v[:, :split], g[:, :split], beta[:, :split], initial_state=h0,
                   output_final_state=True, use_qk_l2norm_in_kernel=True)
    o2, h2 = chunk(q[:, split:], k[:, split:], v[:, split:], g[:, split:], beta[:, split:], initial_state=h1,
                   output_final_state=True, use_qk_l2norm_in_kernel=True)
    assert_rms("o resumed", o, torch.cat([o1, o2], 1), 1e-6)
    assert_rms("ht resumed", ht, h2, 1e-6)
    if kda:
        o_rec, ht_rec = fused_recurrent_kda(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                            use_qk_l2norm_in_kernel=True)
    else:
        o_rec, ht_rec = fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, initial_state=h0,
                                                         output_final_state=True, use_qk_l2norm_in_kernel=True)
    assert_rms("o recurrent", o, o_rec, 1e-5)
    assert_rms("ht recurrent", ht, ht_rec, 1e-5)


@pytest.mark.parametrize("kda", [False, True], ids=["gdn", "kda"])
@pytest.mark.parametrize("T,H,G,K,V,cu_seqlens,use_l2", [
    (17, 1, 3, 8, 4, None, True),
    (65, 2, 2, 8, 8, [0, 5, 40, 65], True),       # varlen across a chunk boundary
    (66, 1, 2, 8, 8, None, False),
])
def test_chunk_gva_gradcheck_fp64(kda, T, H, G, K, V, cu_seqlens, use_l2):
    """fp64 gradcheck of ChunkGatedDeltaRuleFunction / ChunkKDAFunction with grouped heads: dq and
    dk are the sums over each group's value heads."""
    cu = torch.tensor(cu_seqlens) if cu_seqlens is not None else None
    N = len(cu_seqlens) - 1 if cu_seqlens is not None else 1
    inputs = tuple(x.requires_grad_() for x in
                   gva_inputs(1, T, H, G, K, V, kda=kda, l2_in_kernel=use_l2, N=N, seed=T))
    op = chunk_kda if kda else chunk_gated_delta_rule

    def fn(q, k, v, g, beta, h0):
        return op(q, k, v, g, beta, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=use_l2,
                  cu_seqlens=cu)

    o, ht = fn(*inputs)
    assert o.dtype == torch.float64 and ht.dtype == torch.float64
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


@pytest.mark.parametrize("op", ["chunk_gdn", "chunk_kda", "fused_recurrent_gdn", "fused_recurrent_kda"])
def test_gva_head_counts_that_cannot_be_served_raise_fla_050_errors(op):
    """HV not a multiple of H, or q and k with different head counts: fla 0.5.0's ValueError, raised
    before any computation (never a shape error from inside an op)."""
    kda = op.endswith("kda")
    q, k, v, g, beta, _ = gva_inputs(1, 10, 2, 2, 8, 8, kda=kda, l2_in_kernel=True, h0=False)
    fn = {"chunk_gdn": chunk_gated_delta_rule, "chunk_kda": chunk_kda,
          "fused_recurrent_gdn": lambda q, k, v, g, beta: fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta),
          "fused_recurrent_kda": fused_recurrent_kda}[op]
    with pytest.raises(ValueError, match=r"For GVA, num_v_heads \(HV=3\) must be evenly divisible by "
                                         r"num_heads \(H=2\), but got HV % H = 1"):
        fn(q, k, v[:, :, :3], g[:, :, :3], beta[:, :, :3])
    with pytest.raises(ValueError, match=r"q and k must have the same number of heads, "
                                         r"but got q.shape\[2\]=2 and k.shape\[2\]=1"):
        fn(q, k[:, :, :1], v, g, beta)
