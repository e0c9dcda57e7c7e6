"""``chunk_gla`` (fla 0.4.0 ``fla/ops/gla/chunk.py``) and the state recurrence it uses
(``fla/ops/common/chunk_h.py``).

Oracles: fla's own ``naive_recurrent_gla`` (loaded by file path; it computes in fp32), an explicit
per-token fp64 recurrence written here (outputs, final state and, through fp64 autograd, every
gradient), per-sequence runs for varlen (empty and length-1 sequences included), and fp64
``gradcheck`` of ``ChunkGLAFunction``. ``chunk_fwd_h``/``chunk_bwd_dh`` are checked against the
per-token recurrence with raw gates (scalar, constant-decay, key and value gates, splits, varlen).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from myfla.ops.common.chunk_h import chunk_bwd_dh, chunk_fwd_h
from myfla.ops.gla import chunk_gla
from myfla.ops.gla import chunk as gla
from tests.fla_refs import load_function
from tests.numerics import assert_rms

F64 = torch.float64


@pytest.fixture(scope="module")
def naive_gla(fla040_root):
    return load_function(fla040_root, "fla/ops/gla/naive.py", "naive_recurrent_gla")


def recurrent_gla(q, k, v, g, h0, scale):
    """fp64 oracle: h_t = diag(exp(g_t)) h_{t-1} + k_t v_t^T, o_t = scale * q_t h_t (one sequence
    batch ``[B, T, H, *]``)."""
    B, T, H, K = q.shape
    h = h0.clone() if h0 is not None else q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        h = h * g[:, t].exp()[..., None] + k[:, t][..., None] * v[:, t][..., None, :]
        outs.append(scale * (q[:, t][..., None] * h).sum(-2))
    o = torch.stack(outs, 1) if outs else v.new_zeros(B, 0, H, v.shape[-1])
    return o, h


def varlen_reference(q, k, v, g, h0, scale, cu):
    outs, hs = [], []
    for n, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
        o, h = recurrent_gla(q[:, a:b], k[:, a:b], v[:, a:b], g[:, a:b],
                             h0[n:n + 1] if h0 is not None else None, scale)
        outs.append(o)
        hs.append(h)
    return torch.cat(outs, 1), torch.cat(hs, 0)


def _inputs(B, T, H, K, V, N, dtype, h0=True, normalizer=1.0):
    q, k = torch.randn(B, T, H, K), torch.randn(B, T, H, K)
    v = torch.randn(B, T, H, V)
    g = F.logsigmoid(torch.randn(B, T, H, K)) / normalizer
    h = torch.randn(N, H, K, V) if h0 else None
    return [t.to(dtype) if t is not None else None for t in (q, k, v, g, h)]


def _leaves(ts, dtype=None):
    return [t.detach().clone().to(dtype or t.dtype).requires_grad_() if t is not None else None for t in ts]


def _grads(outs, leaves, cots):
    live = [t for t in leaves if t is not None]
    loss = sum((o * c).sum() for o, c in zip(outs, cots))
    gs = iter(torch.autograd.grad(loss, live))
    return [next(gs) if t is not None else None for t in leaves]


CASES = [
    # B, T, H, K, V, cu_seqlens, h0, gate normaliser
    (2, 37, 2, 5, 6, None, True, 1.0),        # T < 64: chunk size 64 from next_power_of_2(37)
    (1, 7, 1, 3, 4, None, False, 1.0),         # chunk size 16
    (2, 130, 3, 8, 4, None, True, 0.1),        # strong decay, T not a multiple of 64
    (1, 200, 2, 16, 8, [0, 64, 65, 200], True, 1.0),
    (1, 50, 2, 4, 3, [0, 1, 17, 17, 50], True, 10.0),   # length-1 and empty sequences
]


@pytest.mark.parametrize("B,T,H,K,V,cu,h0,norm", CASES)
def test_chunk_gla_vs_fp64_recurrence(B, T, H, K, V, cu, h0, norm):
    N = len(cu) - 1 if cu else B
    ins = _inputs(B, T, H, K, V, N, torch.float32, h0, norm)
    cu_t = torch.tensor(cu) if cu else None
    scale = K ** -0.5
    leaves = _leaves(ins)
    o, ht = chunk_gla(*leaves[:4], initial_state=leaves[4], output_final_state=True, cu_seqlens=cu_t)
    assert o.dtype == torch.float32 and ht.dtype == torch.float32 and ht.shape == (N, H, K, V)
    do, dht = torch.randn_like(o), torch.randn_like(ht)
    grads = _grads([o, ht], leaves, [do, dht])

    l64 = _leaves(ins, F64)
    if cu:
        ro, rh = varlen_reference(*l64[:4], l64[4], scale, cu)
    else:
        ro, rh = recurrent_gla(*l64[:4], l64[4], scale)
    rgrads = _grads([ro, rh], l64, [do.double(), dht.double()])
    assert_rms("o", ro, o, 1e-6)
    assert_rms("ht", rh, ht, 1e-6)
    for name, r, t in zip(("dq", "dk", "dv", "dg", "dh0"), rgrads, grads):
        if r is not None:
            assert_rms(name, r, t, 1e-5)

    # fp64 inputs compute in fp64: the port's own numbers agree with the oracle to ~1e-14
    p64 = _leaves(ins, F64)
    o64, ht64 = chunk_gla(*p64[:4], initial_state=p64[4], output_final_state=True, cu_seqlens=cu_t)
    g64 = _grads([o64, ht64], p64, [do.double(), dht.double()])
    assert_rms("o fp64", ro, o64, 1e-12, atol=0)
    assert_rms("ht fp64", rh, ht64, 1e-12, atol=0)
    for name, r, t in zip(("dq", "dk", "dv", "dg", "dh0"), rgrads, g64):
        if r is not None:
            assert_rms(name + " fp64", r, t, 1e-12, atol=0)


def test_chunk_gla_vs_fla_naive(naive_gla):
    """fla's own reference (default scale K^-0.5, fp32 inside)."""
    B, T, H, K, V = 2, 100, 2, 16, 12
    ins = _inputs(B, T, H, K, V, B, torch.float32)
    leaves = _leaves(ins)
    o, ht = chunk_gla(*leaves[:4], initial_state=leaves[4], output_final_state=True)
    do, dht = torch.randn_like(o), torch.randn_like(ht)
    grads = _grads([o, ht], leaves, [do, dht])
    refl = _leaves(ins)
    ro, rh = naive_gla(refl[0], refl[1], refl[2], refl[3], initial_state=refl[4], output_final_state=True)
    rgrads = _grads([ro, rh], refl, [do, dht])
    assert_rms("o", ro, o, 1e-5)
    assert_rms("ht", rh, ht, 1e-5)
    for name, r, t in zip(("dq", "dk", "dv", "dg", "dh0"), rgrads, grads):
        assert_rms(name, r, t, 1e-5)


def test_chunk_gla_low_precision():
    B, T, H, K, V = 1, 80, 2, 8, 8
    ins = _inputs(B, T, H, K, V, B, torch.bfloat16)
    ins[4] = ins[4].float()
    leaves = _leaves(ins)
    o, ht = chunk_gla(*leaves[:4], initial_state=leaves[4], output_final_state=True)
    assert o.dtype == torch.bfloat16 and ht.dtype == torch.float32
    do = torch.randn_like(o)
    dq, dk, dv, dg, dh0 = _grads([o], leaves, [do])
    assert (dq.dtype, dk.dtype, dv.dtype, dg.dtype, dh0.dtype) == (torch.bfloat16,) * 4 + (torch.float32,)
    l64 = _leaves(ins, F64)
    ro, rh = recurrent_gla(*l64[:4], l64[4], K ** -0.5)
    rgrads = _grads([ro], l64, [do.double()])
    # bf16 inputs: the states pass through bf16 (fla keeps them in k.dtype in the forward)
    assert_rms("o", ro, o, 2e-2)
    for name, r, t in zip(("dq", "dk", "dv", "dg", "dh0"), rgrads, (dq, dk, dv, dg, dh0)):
        assert_rms(name, r, t, 2e-2)


def test_chunk_gla_gradcheck_fp64():
    B, T, H, K, V = 1, 19, 1, 3, 2
    q, k, v = (torch.randn(B, T, H, d, dtype=F64, requires_grad=True) for d in (K, K, V))
    g = F.logsigmoid(torch.randn(B, T, H, K, dtype=F64)).requires_grad_()
    h0 = torch.randn(B, H, K, V, dtype=F64, requires_grad=True)

    def f(q, k, v, g, h0):
        return gla.ChunkGLAFunction.apply(q, k, v, g, 0.7, h0, True, None)

    assert torch.autograd.gradcheck(f, (q, k, v, g, h0), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_chunk_gla_helpers_and_errors():
    B, T, H, K, V = 1, 70, 2, 4, 3
    q, k, v, g, _ = _inputs(B, T, H, K, V, B, F64)
    gc, A, h, ht, o = gla.chunk_gla_fwd(q, k, v, g, None, 0.5, None, False, chunk_size=64)
    assert ht is None and h.shape == (B, 2, H, K, V) and A.shape == (B, T, H, 64)
    # A: scale * sum_d q_i k_j exp(G_i - G_j) below the diagonal of each chunk, zero above
    Gc = torch.cat([g[:, :64].cumsum(1), g[:, 64:].cumsum(1)], 1)
    i, j = 10, 3
    ref = 0.5 * (q[0, i, 0] * k[0, j, 0] * (Gc[0, i, 0] - Gc[0, j, 0]).exp()).sum()
    torch.testing.assert_close(A[0, i, 0, j], ref)
    assert A[0, 3, 0, 10] == 0 and A[0, 66, 0, 1] != 0
    torch.testing.assert_close(gc, Gc)
    with pytest.raises(ValueError, match="The batch size is expected to be 1 rather than 2"):
        chunk_gla(*_inputs(2, 8, 1, 2, 2, 2, torch.float32)[:4], cu_seqlens=torch.tensor([0, 8]))
    with pytest.raises(ValueError, match="The number of initial states is expected to be equal"):
        ins = _inputs(1, 8, 1, 2, 2, 3, torch.float32)
        chunk_gla(*ins[:4], initial_state=ins[4], cu_seqlens=torch.tensor([0, 3, 8]))


# -- chunk_h --------------------------------------------------------------------------------------

def token_recurrence(k, v, g, gamma, gk, gv, h0, lens, BT):
    """fp64 per-token states with raw gates; returns the state entering every chunk
    ``[NTtot, H, K, V]`` (sequence by sequence) and the final states ``[N, H, K, V]``."""
    H, K, V = k.shape[2], k.shape[3], v.shape[3]
    starts, finals = [], []
    pos = 0
    for n, L in enumerate(lens):
        h = h0[n].clone() if h0 is not None else k.new_zeros(H, K, V)
        for t in range(L):
            if t % BT == 0:
                starts.append(h.clone())
            i = pos + t
            d = torch.ones(H, K, V, dtype=k.dtype)
            if g is not None:
                d = d * g[0, i].exp()[:, None, None]
            if gamma is not None:
                d = d * gamma.exp()[:, None, None]
            if gk is not None:
                d = d * gk[0, i].exp()[:, :, None]
            if gv is not None:
                d = d * gv[0, i].exp()[:, None, :]
            h = h * d + k[0, i][..., None] * v[0, i][:, None, :]
        finals.append(h)
        pos += L
    return torch.stack(starts) if starts else k.new_zeros(0, H, K, V), torch.stack(finals)


def local_cumsum(x, lens, BT):
    out, pos = [], 0
    for L in lens:
        seq = x[:, pos:pos + L]
        out += [c.cumsum(1) for c in seq.split(BT, 1)]
        pos += L
    return torch.cat(out, 1)


@pytest.mark.parametrize("gates", [("g",), ("gamma",), ("gk",), ("gv",), ("g", "gk", "gv"), ()])
@pytest.mark.parametrize("lens,split", [([37], None), ([20, 1, 0, 45], None), ([70], 32), ([33, 40], 32)])
def test_chunk_fwd_h_and_bwd_dh_vs_token_recurrence(gates, lens, split):
    torch.manual_seed(1)
    H, K, V, BT = 2, 3, 4, 16
    T, N = sum(lens), len(lens)
    cu = torch.tensor([0] + lens).cumsum(0)
    k, v = torch.randn(1, T, H, K, dtype=F64), torch.randn(1, T, H, V, dtype=F64)
    g = F.logsigmoid(torch.randn(1, T, H, dtype=F64)) if "g" in gates else None
    gamma = -torch.rand(H, dtype=F64) * 0.3 if "gamma" in gates else None
    gk = F.logsigmoid(torch.randn(1, T, H, K, dtype=F64)) if "gk" in gates else None
    gv = F.logsigmoid(torch.randn(1, T, H, V, dtype=F64)) if "gv" in gates else None
    h0 = torch.randn(N, H, K, V, dtype=F64)
    cum = {name: local_cumsum(x, lens, BT) if x is not None else None for name, x in (("g", g), ("gk", gk), ("gv", gv))}
    h, ht = chunk_fwd_h(k, v, g=cum["g"], g_gamma=gamma, gk=cum["gk"], gv=cum["gv"], h0=h0,
                        output_final_state=True, cu_seqlens=cu, chunk_size=BT, split_size=split)
    starts, finals = token_recurrence(k, v, g, gamma, gk, gv, h0, lens, BT)
    NTS = (split or BT) // BT
    # the splits' first chunks, sequence by sequence
    chunk_ids, c0 = [], 0
    for L in lens:
        nc = -(-L // BT)
        chunk_ids += [c0 + c for c in range(0, nc, NTS)]
        c0 += nc
    torch.testing.assert_close(h[0], starts[chunk_ids], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ht, finals, rtol=1e-12, atol=1e-12)

    # chunk_bwd_dh: gradient of L = sum_t scale (q_t * qgates_t)^T h_{chunk(t)} (do_t * exp(gv_t)) + <dht, h_T>
    # w.r.t. the state at the end of every chunk, by autograd through injected zeros
    q, do = torch.randn(1, T, H, K, dtype=F64), torch.randn(1, T, H, V, dtype=F64)
    dht = torch.randn(N, H, K, V, dtype=F64)
    scale = 0.3
    nchunks = [-(-L // BT) for L in lens]
    z = torch.zeros(sum(nchunks) + N, H, K, V, dtype=F64, requires_grad=True)   # one after every chunk
    h0l = h0.clone().requires_grad_()
    loss, pos, zi = 0, 0, 0
    for n, L in enumerate(lens):
        hs = h0l[n]
        for c in range(nchunks[n]):
            rows = range(pos + c * BT, pos + min(L, (c + 1) * BT))
            for i in rows:
                qg = q[0, i] * scale
                if cum["g"] is not None:
                    qg = qg * cum["g"][0, i].exp()[:, None]
                if gamma is not None:
                    qg = qg * (gamma * (i - pos - c * BT + 1)).exp()[:, None]
                if cum["gk"] is not None:
                    qg = qg * cum["gk"][0, i].exp()
                dog = do[0, i] * (cum["gv"][0, i].exp() if cum["gv"] is not None else 1)
                loss = loss + (qg[..., None] * hs * dog[:, None, :]).sum()
            for i in rows:
                d = torch.ones(H, K, V, dtype=F64)
                if g is not None:
                    d = d * g[0, i].exp()[:, None, None]
                if gamma is not None:
                    d = d * gamma.exp()[:, None, None]
                if gk is not None:
                    d = d * gk[0, i].exp()[:, :, None]
                if gv is not None:
                    d = d * gv[0, i].exp()[:, None, :]
                hs = hs * d + k[0, i][..., None] * v[0, i][:, None, :]
            hs = hs + z[zi]
            zi += 1
        loss = loss + (dht[n] * hs).sum()
        pos += L
    dz, dh0_ref = torch.autograd.grad(loss, (z, h0l))
    dh, dh0 = chunk_bwd_dh(q, k, v, do, h0, dht, scale, g=cum["g"], g_gamma=gamma, gk=cum["gk"],
                           gv=cum["gv"], cu_seqlens=cu, chunk_size=BT, split_size=split)
    end_ids, c0 = [], 0
    for L in lens:
        nc = -(-L // BT)
        end_ids += [c0 + c for c in range(0, nc, NTS)]
        c0 += nc
    torch.testing.assert_close(dh[0], dz[end_ids], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dh0, dh0_ref, rtol=1e-12, atol=1e-12)


def test_chunk_h_dtypes_and_grouped_queries():
    B, T, H, K, V = 2, 40, 2, 4, 5
    k, v = torch.randn(B, T, H, K).bfloat16(), torch.randn(B, T, H, V).bfloat16()
    h, ht = chunk_fwd_h(k, v, output_final_state=True, chunk_size=16)
    assert h.dtype == torch.bfloat16 and ht.dtype == torch.float32 and h.shape == (B, 3, H, K, V)
    h32, _ = chunk_fwd_h(k, v, chunk_size=16, states_in_fp32=True)
    assert h32.dtype == torch.float32
    with pytest.raises(AssertionError, match="must be a multiple of `chunk_size`"):
        chunk_fwd_h(k, v, chunk_size=16, split_size=24)
    # grouped queries: 4 query heads share the 2 key heads' gates, as running each group's heads
    q, do = torch.randn(B, T, 2 * H, K, dtype=F64), torch.randn(B, T, 2 * H, V, dtype=F64)
    gk = F.logsigmoid(torch.randn(B, T, H, K, dtype=F64)).cumsum(1)
    kk, vv = k.double(), v.double()
    dh, dh0 = chunk_bwd_dh(q, kk, vv, do, None, None, 1.0, gk=gk, chunk_size=64)
    assert dh0 is None and dh.shape == (B, 1, 2 * H, K, V)
    gk_rep = gk.repeat_interleave(2, dim=2)
    dh_ref, _ = chunk_bwd_dh(q, kk.repeat_interleave(2, 2), vv.repeat_interleave(2, 2), do, None, None, 1.0,
                             gk=gk_rep, chunk_size=64)
    torch.testing.assert_close(dh, dh_ref)
