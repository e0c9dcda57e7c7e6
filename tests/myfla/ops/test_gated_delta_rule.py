"""myfla.ops.gated_delta_rule (chunk and fused_recurrent) against fla's pure-torch oracles.

Oracles, loaded by file path from the fetched upstream trees:
- fla 0.6.0 ``fla/ops/gated_delta_rule/naive.py::naive_recurrent_gated_delta_rule(q, k, v, beta, g)``;
- fla 0.4.0 ``fla/ops/kda/naive.py::naive_recurrent_kda`` with ``g`` expanded over K (exact GDN).
Both cast their inputs to ``torch.float``/``torch.float32``; ``as_fp64`` rebinds the module's ``torch``
name to a proxy whose ``float``/``float32`` are ``float64``, so the oracle's own code runs (and is
differentiated) in fp64 unchanged.
"""

from __future__ import annotations

import types
import warnings

import pytest
import torch
import torch.nn.functional as F

from myfla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
from tests.fla_refs import load_module
from tests.numerics import assert_rms

D = torch.float64


class _Fp64Torch(types.ModuleType):
    float = torch.float64
    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


def as_fp64(module):
    module.torch = _Fp64Torch("torch")
    return module


@pytest.fixture(scope="module")
def gdn_ref(fla060_root):
    return as_fp64(load_module(fla060_root, "fla/ops/gated_delta_rule/naive.py")).naive_recurrent_gated_delta_rule


@pytest.fixture(scope="module")
def kda_ref(fla040_root):
    return as_fp64(load_module(fla040_root, "fla/ops/kda/naive.py")).naive_recurrent_kda


def make_inputs(B, T, H, K, V, normalize_k=True, h0=True, N=None, HV=None):
    HV = HV or H
    q = torch.randn(B, T, H, K, dtype=D)
    k = torch.randn(B, T, H, K, dtype=D)
    if normalize_k:       # raw randn keys make the delta rule explode; l2norm-in-kernel cases pass raw keys
        k = F.normalize(k, dim=-1)
    v = torch.randn(B, T, HV, V, dtype=D)
    g = F.logsigmoid(torch.randn(B, T, HV, dtype=D))
    beta = torch.randn(B, T, HV, dtype=D).sigmoid()
    state = torch.randn(N or B, HV, K, V, dtype=D) if h0 else None
    return q, k, v, g, beta, state


def l2(x):
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)


CHUNK_CASES = [  # B, T, H, K, V, h0, scale, l2norm
    (2, 1, 1, 32, 16, True, None, False),
    (1, 17, 4, 60, 40, False, 0.3, False),
    (2, 63, 1, 64, 48, True, None, True),
    (1, 64, 4, 100, 64, True, None, False),
    (2, 65, 1, 60, 40, True, 0.5, True),
    (1, 200, 4, 100, 64, True, None, False),
]


@pytest.mark.parametrize("B,T,H,K,V,use_h0,scale,use_l2", CHUNK_CASES)
def test_chunk_matches_naive_fp32(gdn_ref, B, T, H, K, V, use_h0, scale, use_l2):
    q, k, v, g, beta, h0 = make_inputs(B, T, H, K, V, normalize_k=not use_l2, h0=use_h0)
    leaves = [x for x in (q, k, v, g, beta, h0) if x is not None]
    for x in leaves:
        x.requires_grad_()
    o_ref, ht_ref = gdn_ref(l2(q) if use_l2 else q, l2(k) if use_l2 else k, v, beta, g, scale=scale,
                            initial_state=h0, output_final_state=True)
    do, dht = torch.randn_like(o_ref), torch.randn_like(ht_ref)
    ((o_ref * do).sum() + (ht_ref * dht).sum()).backward()
    refs = [x.grad for x in leaves]

    ours = [x.detach().float().requires_grad_() for x in leaves]
    args = dict(zip(["q", "k", "v", "g", "beta", "initial_state"], ours))
    o, ht = chunk_gated_delta_rule(**args, scale=scale, output_final_state=True, use_qk_l2norm_in_kernel=use_l2)
    assert o.dtype == torch.float32 and ht.dtype == torch.float32
    assert_rms("o", o_ref, o, 1e-5)
    assert_rms("ht", ht_ref, ht, 1e-5)
    ((o * do.float()).sum() + (ht * dht.float()).sum()).backward()
    for name, ref, x in zip(["dq", "dk", "dv", "dg", "dbeta", "dh0"], refs, ours):
        assert_rms(name, ref, x.grad, 1e-4)


def test_chunk_matches_kda_oracle_with_expanded_gate(kda_ref):
    B, T, H, K, V = 1, 130, 2, 60, 40
    q, k, v, g, beta, h0 = make_inputs(B, T, H, K, V)
    leaves = [q, k, v, g, beta, h0]
    for x in leaves:
        x.requires_grad_()
    o_ref, ht_ref = kda_ref(q, k, v, g.unsqueeze(-1).expand(B, T, H, K), beta, initial_state=h0,
                            output_final_state=True)
    do = torch.randn_like(o_ref)
    ((o_ref * do).sum() + ht_ref.sum()).backward()
    ours = [x.detach().float().requires_grad_() for x in leaves]
    o, ht = chunk_gated_delta_rule(*ours[:5], initial_state=ours[5], output_final_state=True)
    assert_rms("o", o_ref, o, 1e-5)
    assert_rms("ht", ht_ref, ht, 1e-5)
    ((o * do.float()).sum() + ht.sum()).backward()
    for name, x, y in zip(["dq", "dk", "dv", "dg", "dbeta", "dh0"], leaves, ours):
        assert_rms(name, x.grad, y.grad, 1e-4)


def test_chunk_bf16(gdn_ref):
    """bf16 q/k/v/beta (fp32 g and h0) as fla's tests run fp16; thresholds are fla's
    (o/ht .005, dq/dk/dv/dh0 .008, dg/dbeta .02): bf16 storage of inputs, A, w, u, h and outputs
    rounds at ~4e-3 relative, so an fp32-level bound does not apply."""
    B, T, H, K, V = 1, 150, 2, 64, 64
    q, k, v, g, beta, h0 = make_inputs(B, T, H, K, V)
    q, k, v, beta = (x.bfloat16().double() for x in (q, k, v, beta))
    leaves = [q, k, v, g, beta, h0]
    for x in leaves:
        x.requires_grad_()
    o_ref, ht_ref = gdn_ref(q, k, v, beta, g, initial_state=h0, output_final_state=True)
    do = torch.randn_like(o_ref).bfloat16().double()
    ((o_ref * do).sum() + ht_ref.sum()).backward()
    ours = [x.detach().to(torch.bfloat16 if i in (0, 1, 2, 4) else torch.float32).requires_grad_()
            for i, x in enumerate(leaves)]
    o, ht = chunk_gated_delta_rule(*ours[:5], initial_state=ours[5], output_final_state=True)
    assert o.dtype == torch.bfloat16 and ht.dtype == torch.float32
    assert_rms("o", o_ref, o, 5e-3)
    assert_rms("ht", ht_ref, ht, 5e-3)
    ((o * do.bfloat16()).sum() + ht.sum()).backward()
    for name, x, y, tol in zip(["dq", "dk", "dv", "dg", "dbeta", "dh0"], leaves, ours,
                               [8e-3, 8e-3, 8e-3, 2e-2, 2e-2, 8e-3]):
        assert y.grad.dtype == y.dtype
        assert_rms(name, x.grad, y.grad, tol)


# ---- fused_recurrent ---------------------------------------------------------------------------
@pytest.mark.parametrize("B,T,H,HV,K,V,use_h0,use_l2", [
    (2, 1, 1, 1, 32, 16, True, False),
    (1, 63, 1, 2, 60, 40, False, True),
    (2, 65, 2, 4, 100, 64, True, True),
    (1, 200, 4, 4, 64, 48, True, False),
])
def test_fused_recurrent_matches_naive(gdn_ref, B, T, H, HV, K, V, use_h0, use_l2):
    q, k, v, g, beta, h0 = make_inputs(B, T, H, K, V, normalize_k=not use_l2, h0=use_h0, HV=HV)
    rep = HV // H
    qr, kr = q.repeat_interleave(rep, 2), k.repeat_interleave(rep, 2)     # GVA = explicit head repeat
    o_ref, ht_ref = gdn_ref(l2(qr) if use_l2 else qr, l2(kr) if use_l2 else kr, v, beta, g,
                            initial_state=h0, output_final_state=True)
    f = (lambda x: x.float() if x is not None else None)
    o, ht = fused_recurrent_gated_delta_rule(f(q), f(k), f(v), g=f(g), beta=f(beta), initial_state=f(h0),
                                             output_final_state=True, use_qk_l2norm_in_kernel=use_l2)
    assert o.shape == (B, T, HV, V) and ht.dtype == torch.float32
    assert_rms("o", o_ref, o, 1e-5)
    assert_rms("ht", ht_ref, ht, 1e-5)


@pytest.mark.parametrize("T", [1, 5])            # the decoding step and the multi-token loop
def test_fused_recurrent_l2norm_eps_on_small_queries(gdn_ref, T):
    """The in-kernel L2 norm is ``x / sqrt(|x|^2 + 1e-6)`` (fla's l2norm) for q as for k, also where
    the port folds the output scale into q's normalisation: rows of squared norm about 1e-6 make the
    eps decide the result. Oracle: fla's naive recurrence on ``l2(q)``, ``l2(k)`` in fp64."""
    B, H, K, V = 2, 2, 64, 16
    q, k, v, g, beta, h0 = make_inputs(B, T, H, K, V, normalize_k=False)
    q = q * (1e-3 / q.norm(dim=-1, keepdim=True)) * torch.rand(B, T, H, 1, dtype=D).add(0.5)
    o_ref, ht_ref = gdn_ref(l2(q), l2(k), v, beta, g, initial_state=h0, output_final_state=True)
    f = (lambda x: x.float())
    o, ht = fused_recurrent_gated_delta_rule(f(q), f(k), f(v), g=f(g), beta=f(beta), initial_state=f(h0),
                                             output_final_state=True, use_qk_l2norm_in_kernel=True)
    assert_rms("o", o_ref, o, 1e-5)
    assert_rms("ht", ht_ref, ht, 1e-5)


def test_fused_recurrent_gk_matches_kda_oracle(kda_ref):
    B, T, H, K, V = 2, 70, 2, 60, 40
    q, k, v, _, beta, h0 = make_inputs(B, T, H, K, V)
    gk = F.logsigmoid(torch.randn(B, T, H, K, dtype=D))
    o_ref, ht_ref = kda_ref(q, k, v, gk, beta, initial_state=h0, output_final_state=True)
    o, ht = fused_recurrent_gated_delta_rule(q.float(), k.float(), v.float(), gk=gk.float(), beta=beta.float(),
                                             initial_state=h0.float(), output_final_state=True)
    assert_rms("o", o_ref, o, 1e-5)
    assert_rms("ht", ht_ref, ht, 1e-5)


def ref_recurrent_gv_vector_beta(q, k, v, g, gv, beta, scale, h0):
    """fla's kernel math written out per token (fp64): decays, then the value- or key-side delta rule."""
    B, T, H, K = q.shape
    h = h0.clone()
    outs = []
    for t in range(T):
        h = h * g[:, t].exp()[..., None, None]
        b_k, b_v = k[:, t], v[:, t]
        b = beta[:, t] if beta.dim() == 4 else beta[:, t, :, None]
        if gv is not None:
            h = h * gv[:, t].exp()[..., None, :]
            b_k = b * (b_k - torch.einsum('bhkv,bhv->bhk', h, b_v))
        else:
            b_v = b * (b_v - torch.einsum('bhkv,bhk->bhv', h, b_k))
        h = h + b_k[..., :, None] * b_v[..., None, :]
        outs.append(torch.einsum('bhkv,bhk->bhv', h, q[:, t] * scale))
    return torch.stack(outs, 1), h


@pytest.mark.parametrize("variant", ["vector_beta", "gv"])
def test_fused_recurrent_vector_beta_and_gv(variant):
    B, T, H, K, V = 2, 40, 2, 32, 32
    q, k, v, g, beta, h0 = make_inputs(B, T, H, K, V)
    gv = None
    if variant == "vector_beta":
        beta = torch.rand(B, T, H, V, dtype=D)
    else:
        gv = F.logsigmoid(torch.randn(B, T, H, V, dtype=D))
    o_ref, ht_ref = ref_recurrent_gv_vector_beta(q, k, v, g, gv, beta, K ** -0.5, h0)
    f = (lambda x: x.float() if x is not None else None)
    o, ht = fused_recurrent_gated_delta_rule(f(q), f(k), f(v), g=f(g), gv=f(gv), beta=f(beta),
                                             initial_state=f(h0), output_final_state=True)
    assert_rms("o", o_ref, o, 1e-5)
    assert_rms("ht", ht_ref, ht, 1e-5)


def test_fused_recurrent_backward_raises_as_fla():
    q, k, v, g, beta, _ = make_inputs(1, 5, 1, 8, 8, h0=False)
    q = q.float().requires_grad_()
    o, _ = fused_recurrent_gated_delta_rule(q, k.float(), v.float(), g=g.float(), beta=beta.float())
    with pytest.raises(NotImplementedError, match="Backward pass is not implemented yet"):
        o.sum().backward()


def test_fused_recurrent_default_beta_is_one(gdn_ref):
    q, k, v, g, _, h0 = make_inputs(1, 20, 2, 16, 16)
    o_ref, _ = gdn_ref(q, k, v, torch.ones_like(g), g, initial_state=h0)
    o, ht = fused_recurrent_gated_delta_rule(q.float(), k.float(), v.float(), g=g.float(), initial_state=h0.float())
    assert ht is None
    assert_rms("o", o_ref, o, 1e-5)


# ---- invariants ----------------------------------------------------------------------------------
def test_chunk_equals_fused_recurrent_long():
    q, k, v, g, beta, h0 = (x.float() for x in make_inputs(1, 1000, 2, 60, 40))
    o1, s1 = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    o2, s2 = fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, initial_state=h0, output_final_state=True)
    # both fp32 with different summation orders over 1000 steps
    assert_rms("o", o2, o1, 1e-5)
    assert_rms("ht", s2, s1, 1e-5)


@pytest.mark.parametrize("op", ["chunk", "fused_recurrent"])
def test_varlen_equals_per_sequence(op):
    cu = torch.tensor([0, 1, 65, 66, 130, 200])
    N, T, H, K, V = 5, 200, 2, 60, 40
    q, k, v, g, beta, h0 = (x.float() for x in make_inputs(1, T, H, K, V, N=N))
    leaves = [q, k, v, g, beta, h0]
    run = chunk_gated_delta_rule if op == "chunk" else \
        (lambda q, k, v, g, beta, **kw: fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, **kw))
    grad = op == "chunk"
    if grad:
        for x in leaves:
            x.requires_grad_()
    o, ht = run(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu)
    do = torch.randn_like(o)
    if grad:
        ((o * do).sum() + ht.sum()).backward()
        grads = [x.grad.clone() for x in leaves]
        for x in leaves:
            x.grad = None
    for i in range(N):
        s, e = cu[i].item(), cu[i + 1].item()
        o_i, ht_i = run(q[:, s:e], k[:, s:e], v[:, s:e], g[:, s:e], beta[:, s:e], initial_state=h0[i:i + 1],
                        output_final_state=True)
        assert_rms(f"o[{i}]", o_i, o[:, s:e], 1e-6)
        assert_rms(f"ht[{i}]", ht_i, ht[i:i + 1], 1e-6)
        if grad:
            ((o_i * do[:, s:e]).sum() + ht_i.sum()).backward()
    if grad:
        for name, ref, x in zip(["dq", "dk", "dv", "dg", "dbeta", "dh0"], grads, leaves):
            assert_rms(name, x.grad, ref, 1e-6)


@pytest.mark.parametrize("splits", [[100], [1, 64, 65], [63, 64]])
def test_resume_equals_full_run(splits):
    q, k, v, g, beta, h0 = (x.float() for x in make_inputs(2, 150, 2, 60, 40))
    o_full, ht_full = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    state, outs, start = h0, [], 0
    for end in splits + [150]:
        o, state = chunk_gated_delta_rule(q[:, start:end], k[:, start:end], v[:, start:end], g[:, start:end],
                                          beta[:, start:end], initial_state=state, output_final_state=True)
        outs.append(o)
        start = end
    # both sides fp32 (each ~5e-7 from fp64), with chunk boundaries at different tokens
    assert_rms("o", o_full, torch.cat(outs, 1), 1e-5)
    assert_rms("ht", ht_full, state, 1e-5)


def test_input_checks_and_messages():
    q, k, v, g, beta, h0 = (x.float() for x in make_inputs(2, 10, 1, 8, 8))
    cu = torch.tensor([0, 4, 10])
    for fn in (chunk_gated_delta_rule,
               lambda q, k, v, g, beta, **kw: fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, **kw)):
        with pytest.raises(ValueError, match=r"The batch size is expected to be 1 rather than 2 when using "
                                             r"`cu_seqlens`\.Please flatten variable-length inputs"):
            fn(q, k, v, g, beta, cu_seqlens=cu)
        with pytest.raises(ValueError, match=r"i\.e\., 2 rather than 3\."):
            fn(q[:1], k[:1], v[:1], g[:1], beta[:1], initial_state=torch.zeros(3, 1, 8, 8), cu_seqlens=cu)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chunk_gated_delta_rule(q, k, v, g, beta, head_first=False)
    assert any("head_first is deprecated" in str(w.message) for w in caught)


@pytest.mark.parametrize("use_h0,final,use_l2", [(True, True, False), (False, False, True), (False, True, False)])
def test_time_segments_equal_single_pass(monkeypatch, use_h0, final, use_l2):
    """Long inputs run as cache-sized time segments with the state carried over; forcing tiny
    segments (2 chunks, last one partial) must give the single-pass results and gradients."""
    import myfla.ops.gated_delta_rule.chunk as chunk_mod
    B, T, H, K, V = 2, 300, 2, 32, 16
    xs = [x.float() for x in make_inputs(B, T, H, K, V, normalize_k=not use_l2)]
    results = []
    monkeypatch.setattr(chunk_mod, "_MIN_SEGMENT_CHUNKS", 1)
    for seg_bytes in (chunk_mod._SEGMENT_BYTES, 128 * B * H * K * 4):
        monkeypatch.setattr(chunk_mod, "_SEGMENT_BYTES", seg_bytes)
        ys = [x.clone().requires_grad_() for x in xs]
        o, ht = chunk_gated_delta_rule(*ys[:5], initial_state=ys[5] if use_h0 else None, output_final_state=final,
                                       use_qk_l2norm_in_kernel=use_l2)
        do = torch.randn(o.shape, dtype=o.dtype, generator=torch.Generator().manual_seed(1))
        ((o * do).sum() + (ht.sum() if final else 0)).backward()
        results.append([o, ht] + [y.grad for y in ys])
    assert len(chunk_mod._time_segments(B, T, H, K, None)) > 1
    for name, a, b in zip(["o", "ht", "dq", "dk", "dv", "dg", "dbeta", "dh0"], *results):
        if a is None:
            assert b is None, name
            continue
        assert_rms(name, a, b, 1e-6)


def test_time_segment_rule(monkeypatch):
    """Segments: whole chunks covering [0, T); at least _MIN_SEGMENT_CHUNKS chunks (wide inputs);
    larger with more threads; one segment on GPUs and for varlen inputs."""
    import myfla.ops.gated_delta_rule.chunk as chunk_mod
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    segs = chunk_mod._time_segments(4, 4096, 16, 128, None)            # a training shape: 32 KB per token
    assert segs[0] == (0, 64 * chunk_mod._MIN_SEGMENT_CHUNKS) and segs[-1][1] == 4096
    assert all(e - s == 256 for s, e in segs) and len(segs) == 16
    assert chunk_mod._time_segments(1, 8192, 4, 128, None) == [(s, s + 2048) for s in range(0, 8192, 2048)]
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert len(chunk_mod._time_segments(1, 8192, 4, 128, None)) == 1
    assert len(chunk_mod._time_segments(4, 4096, 16, 128, None)) == 8
    assert chunk_mod._time_segments(4, 4096, 16, 128, None, torch.device("cuda")) == [(0, 4096)]
    assert chunk_mod._time_segments(1, 4096, 16, 128, torch.tensor([0, 4096])) == [(0, 4096)]


@pytest.mark.parametrize("T,H,K,V,use_l2,use_h0", [
    (17, 1, 8, 8, False, True),
    (65, 2, 16, 8, True, True),       # two chunks: the state recurrence and its backward
])
def test_chunk_gradcheck_fp64(T, H, K, V, use_l2, use_h0):
    """fp64 inputs are computed in fp64 end to end, so finite differences agree with the analytic
    backward (ChunkGatedDeltaRuleFunction through chunk_gated_delta_rule), incl. in-kernel l2norm
    and the initial state. fast_mode checks random projections of the Jacobian (full mode would
    need thousands of forward passes at T=65)."""
    gen = torch.Generator().manual_seed(T * 100 + H)
    opts = dict(dtype=torch.float64, generator=gen)
    q = torch.randn(1, T, H, K, **opts)
    k = torch.randn(1, T, H, K, **opts)
    if not use_l2:
        k = F.normalize(k, p=2, dim=-1)
    v = torch.randn(1, T, H, V, **opts)
    g = F.logsigmoid(torch.randn(1, T, H, **opts))
    beta = torch.rand(1, T, H, **opts)
    h0 = torch.randn(1, H, K, V, **opts) if use_h0 else None
    inputs = tuple(x.requires_grad_() for x in (q, k, v, g, beta, h0) if x is not None)

    def fn(q, k, v, g, beta, *rest):
        return chunk_gated_delta_rule(q, k, v, g, beta, initial_state=rest[0] if rest else None,
                                      output_final_state=True, use_qk_l2norm_in_kernel=use_l2)

    out, ht = fn(*inputs)
    assert out.dtype == torch.float64 and ht.dtype == torch.float64
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)
