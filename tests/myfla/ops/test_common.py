"""myfla.ops.common (chunk_delta_h, chunk_o, chunk_scaled_dot_kkt) against references written from
the math: a direct chunk-by-chunk recurrence per sequence, differentiated with fp64 autograd.

The ports run in fp64 here (they accumulate in the widest input dtype), so agreement is checked
to 1e-10 except for fp32-by-contract outputs (final state, dh0: 1e-6)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import myfla.ops.common.chunk_delta_h as chunk_delta_h
from myfla.ops.common.chunk_delta_h import chunk_gated_delta_rule_bwd_dhu, chunk_gated_delta_rule_fwd_h
from myfla.ops.common.chunk_o import chunk_bwd_dqkwg, chunk_bwd_dv_local, chunk_fwd_o
from myfla.ops.common.chunk_scaled_dot_kkt import chunk_scaled_dot_kkt_fwd
from myfla.ops.utils import chunk_local_cumsum, prepare_position_ids
from tests.numerics import assert_rms

D = torch.float64
BT = 64


def _segments(B, T, cu_seqlens):
    """(batch row, start, end) of every sequence."""
    if cu_seqlens is None:
        return [(b, 0, T) for b in range(B)]
    c = cu_seqlens.tolist()
    return [(0, s, e) for s, e in zip(c[:-1], c[1:])]


def ref_chunk_forward(q, k, w, u, g, gk, h0, scale, cu_seqlens=None):
    """Per sequence, per chunk: v_new = u - w h; o = scale (exp(g) q h + tril(q k^T G) v_new);
    h <- decay h + (k exp(g_last - g))^T v_new. Returns o, v_new, final states, the list of
    chunk-end states (for dh checks) and the list of chunk-start states."""
    B, T, H, K = k.shape
    V = u.shape[-1]
    o_parts, vn_parts = [], []
    finals, ends, starts = [], [], []
    for i, (b, s0, e0) in enumerate(_segments(B, T, cu_seqlens)):
        h = h0[i] if h0 is not None else torch.zeros(H, K, V, dtype=D)
        o_seq, vn_seq = [], []
        for s in range(s0, e0, BT):
            e = min(s + BT, e0)
            starts.append(h)
            vn = u[b, s:e] - torch.einsum('thk,hkv->thv', w[b, s:e], h)
            gg = g[b, s:e] if g is not None else torch.zeros(e - s, H, dtype=D)
            qk = torch.einsum('thk,shk->hts', q[b, s:e], k[b, s:e])
            mask = torch.ones(e - s, e - s, dtype=torch.bool).tril()
            G = (gg.T[:, :, None] - gg.T[:, None, :]).masked_fill(~mask, -float('inf')).exp()
            oc = torch.einsum('thk,hkv->thv', q[b, s:e] * gg.exp()[..., None], h) + \
                torch.einsum('hts,shv->thv', qk * G, vn)
            o_seq.append(oc * scale)
            vn_seq.append(vn)
            h = h * gg[-1].exp()[:, None, None]
            if gk is not None:
                h = h * gk[b, e - 1].exp()[..., None]
            h = h + torch.einsum('thk,thv->hkv', k[b, s:e] * (gg[-1][None] - gg).exp()[..., None], vn)
            ends.append(h)
        finals.append(h)
        o_parts.append(torch.cat(o_seq, 0))
        vn_parts.append(torch.cat(vn_seq, 0))
    if cu_seqlens is None:
        o, vn_all = torch.stack(o_parts), torch.stack(vn_parts)
    else:
        o, vn_all = torch.cat(o_parts, 0)[None], torch.cat(vn_parts, 0)[None]
    return o, vn_all, torch.stack(finals), ends, starts


def _inputs(B, T, H, K, V, cu_seqlens, gate):
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    q = torch.randn(B, T, H, K, dtype=D)
    k = F.normalize(torch.randn(B, T, H, K, dtype=D), dim=-1)
    w = F.normalize(torch.randn(B, T, H, K, dtype=D), dim=-1) * 0.5
    u = torch.randn(B, T, H, V, dtype=D)
    g = gk = None
    if gate in ('g', 'both'):
        g = chunk_local_cumsum(F.logsigmoid(torch.randn(B, T, H, dtype=D)), BT, cu_seqlens=cu_seqlens, output_dtype=D)
    if gate in ('gk', 'both'):
        gk = chunk_local_cumsum(F.logsigmoid(torch.randn(B, T, H, K, dtype=D)), BT, cu_seqlens=cu_seqlens,
                                output_dtype=D)
    h0 = torch.randn(N, H, K, V, dtype=D)
    return q, k, w, u, g, gk, h0


CASES = [  # B, T, H, K, V, cu_seqlens
    (2, 1, 1, 32, 16, None),
    (2, 65, 2, 60, 40, None),
    (1, 130, 3, 100, 24, None),
    (1, 200, 2, 60, 40, [0, 1, 70, 134, 135, 200]),
]


@pytest.mark.parametrize("gate", ["none", "g", "gk", "both"])
@pytest.mark.parametrize("B,T,H,K,V,cu", CASES)
def test_fwd_h_matches_recurrence(B, T, H, K, V, cu, gate, intra_op_threads):
    cu_seqlens = torch.tensor(cu) if cu is not None else None
    q, k, w, u, g, gk, h0 = _inputs(B, T, H, K, V, cu_seqlens, gate)
    use_h0 = T != 65   # also cover the no-initial-state path
    h, v_new, ht = chunk_gated_delta_rule_fwd_h(k, w, u, g=g, gk=gk, initial_state=h0 if use_h0 else None,
                                                output_final_state=True, cu_seqlens=cu_seqlens)
    _, vn_ref, ht_ref, _, starts = ref_chunk_forward(q, k, w, u, g, gk, h0 if use_h0 else None, 1.0, cu_seqlens)
    # fla's fp32 final state; fp64 inputs keep fp64 (the port computes in promote(dtype, fp32))
    assert h.dtype == k.dtype and ht.dtype == torch.promote_types(k.dtype, torch.float32) and v_new.dtype == u.dtype
    assert_rms("h", torch.stack(starts).view(h.shape[0], -1, H, K, V), h, 1e-12)
    assert_rms("v_new", vn_ref, v_new, 1e-12)
    assert_rms("ht", ht_ref, ht, 1e-6)
    _, none_v, none_ht = chunk_gated_delta_rule_fwd_h(k, w, u, g=g, gk=gk, save_new_value=False, cu_seqlens=cu_seqlens)
    assert none_v is None and none_ht is None


@pytest.mark.parametrize("gate", ["g", "gk", "both"])
@pytest.mark.parametrize("B,T,H,K,V,cu", CASES[1:])
def test_bwd_dhu_matches_autograd(B, T, H, K, V, cu, gate, intra_op_threads):
    cu_seqlens = torch.tensor(cu) if cu is not None else None
    q, k, w, u, g, gk, h0 = _inputs(B, T, H, K, V, cu_seqlens, gate)
    u.requires_grad_()
    h0.requires_grad_()
    scale = 0.3
    do, dv, dht = torch.randn(B, T, H, V, dtype=D), torch.randn(B, T, H, V, dtype=D), torch.randn_like(h0)
    # dv enters as the gradient of v_new from the local paths; here: an extra <v_new, dv> term.
    # q enters only through the state readout scale * exp(g) q h (bwd_dhu's q^T do term).
    _, vn, ht, ends, starts = ref_chunk_forward(torch.zeros_like(q), k, w, u, g, gk, h0, scale, cu_seqlens)
    idx = 0
    loss = (vn * dv).sum() + (ht * dht).sum()
    for (b, s0, e0) in _segments(B, T, cu_seqlens):
        for s in range(s0, e0, BT):
            e = min(s + BT, e0)
            qq = q[b, s:e] * (g[b, s:e].exp()[..., None] if g is not None else 1)
            loss = loss + scale * (torch.einsum('thk,hkv->thv', qq, starts[idx]) * do[b, s:e]).sum()
            idx += 1
    for x in ends:
        x.retain_grad()
    loss.backward()
    dh, dh0, dv2 = chunk_gated_delta_rule_bwd_dhu(q, k, w, do, dv, g=g, gk=gk, h0=h0, dht=dht, scale=scale,
                                                  cu_seqlens=cu_seqlens)
    assert dh.dtype == q.dtype and dh0.dtype == torch.promote_types(q.dtype, torch.float32) and dv2.dtype == dv.dtype
    assert_rms("dh", torch.stack([x.grad for x in ends]).view(dh.shape), dh, 1e-12)
    assert_rms("dv2", u.grad, dv2, 1e-12)
    assert_rms("dh0", h0.grad, dh0, 1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loops_in_place_form_is_bitwise_the_out_of_place_one(monkeypatch, dtype, two_threads):
    """With two threads the loops pre-fill their outputs and update them in place; forcing the
    one-thread form at the same thread count gives the same bits (states, v_new, dh, dh0, dv2)."""
    cu_seqlens = torch.tensor([0, 70, 200])
    q, k, w, u, g, gk, h0 = (x.to(dtype) if x is not None else None
                             for x in _inputs(1, 200, 2, 60, 40, cu_seqlens, "both"))
    do, dv, dht = (torch.randn(1, 200, 2, 40, dtype=dtype), torch.randn(1, 200, 2, 40, dtype=dtype),
                   torch.randn_like(h0))
    calls = []
    prefill = chunk_delta_h._prefill

    def spy(out, start):
        calls.append(prefill(out, start))
        return calls[-1]

    def run():
        fwd = chunk_gated_delta_rule_fwd_h(k, w, u, g=g, gk=gk, initial_state=h0, output_final_state=True,
                                           cu_seqlens=cu_seqlens)
        bwd = chunk_gated_delta_rule_bwd_dhu(q, k, w, do, dv, g=g, gk=gk, h0=h0, dht=dht, scale=0.3,
                                             cu_seqlens=cu_seqlens)
        return fwd + bwd
    monkeypatch.setattr(chunk_delta_h, "_prefill", spy)
    in_place = run()
    monkeypatch.setattr(chunk_delta_h, "_prefill", lambda out, start: False)
    out_of_place = run()
    assert calls == [True, True]                    # both loops took the in-place form
    for a, b in zip(in_place, out_of_place):
        assert torch.equal(a, b)


@pytest.mark.parametrize("gate", ["none", "g"])
@pytest.mark.parametrize("B,T,H,K,V,cu", CASES)
def test_chunk_o_chain_matches_autograd(B, T, H, K, V, cu, gate):
    """fwd_h + chunk_fwd_o forward; chunk_bwd_dv_local + bwd_dhu + chunk_bwd_dqkwg backward, as fla's
    GDN backward composes them, against fp64 autograd of the direct reference."""
    cu_seqlens = torch.tensor(cu) if cu is not None else None
    q, k, w, u, g, _, h0 = _inputs(B, T, H, K, V, cu_seqlens, gate)
    scale = K ** -0.5
    leaves = [x for x in (q, k, w, u, g, h0) if x is not None]
    for x in leaves:
        x.requires_grad_()
    o_ref, _, ht_ref, _, _ = ref_chunk_forward(q, k, w, u, g, None, h0, scale, cu_seqlens)
    do, dht = torch.randn_like(o_ref), torch.randn_like(ht_ref)
    ((o_ref * do).sum() + (ht_ref * dht).sum()).backward()

    with torch.no_grad():
        h, v_new, ht = chunk_gated_delta_rule_fwd_h(k, w, u, g=g, initial_state=h0, output_final_state=True,
                                                    cu_seqlens=cu_seqlens)
        o = chunk_fwd_o(q, k, v_new, h, g=g, scale=scale, cu_seqlens=cu_seqlens)
        assert_rms("o", o_ref, o, 1e-12)
        dv = chunk_bwd_dv_local(q, k, do, g=g, scale=scale, cu_seqlens=cu_seqlens)
        dh, dh0, dv2 = chunk_gated_delta_rule_bwd_dhu(q, k, w, do, dv, g=g, h0=h0, dht=dht, scale=scale,
                                                      cu_seqlens=cu_seqlens)
        dq, dk, dw, dg = chunk_bwd_dqkwg(q, k, v_new, do, h, dh, w=w, g=g, dv=dv2, scale=scale,
                                         cu_seqlens=cu_seqlens)
    assert_rms("dq", q.grad, dq, 1e-10)
    assert_rms("dk", k.grad, dk, 1e-10)
    assert_rms("dw", w.grad, dw, 1e-10)
    assert_rms("du", u.grad, dv2, 1e-10)
    assert_rms("dh0", h0.grad, dh0, 1e-6)
    if g is not None:
        assert dg.dtype == torch.promote_types(q.dtype, torch.float32)
        assert_rms("dg", g.grad, dg, 1e-6)
    else:
        assert dg is None


def test_dv_local_with_A_is_transposed_tril_product():
    """KDA's use: dv = tril(A)^T @ do per chunk, A given ([B, T, H, BT], rows = query tokens)."""
    B, T, H, V = 2, 100, 2, 24
    A = torch.randn(B, T, H, BT, dtype=D)
    do = torch.randn(B, T, H, V, dtype=D)
    dv = chunk_bwd_dv_local(None, torch.empty(B, T, H, 8, dtype=D), do, A=A)
    ref = torch.zeros_like(do)
    for s in range(0, T, BT):
        e = min(s + BT, T)
        P = A[:, s:e, :, :e - s].permute(0, 2, 1, 3).tril()           # [B, H, t, s]
        ref[:, s:e] = torch.einsum('bhts,bthv->bshv', P, do[:, s:e])
    assert_rms("dv", ref, dv, 1e-12)


@pytest.mark.parametrize("B,T,H,K,V,cu", CASES)
def test_chunk_scaled_dot_kkt(B, T, H, K, V, cu):
    cu_seqlens = torch.tensor(cu) if cu is not None else None
    _, k, _, _, g, _, _ = _inputs(B, T, H, K, V, cu_seqlens, 'g')
    beta = torch.rand(B, T, H, dtype=D)
    ref = torch.zeros(B, T, H, BT, dtype=D)
    for b, s0, e0 in _segments(B, T, cu_seqlens):
        for s in range(s0, e0, BT):
            e = min(s + BT, e0)
            kk = torch.einsum('thk,shk->ths', k[b, s:e], k[b, s:e])
            G = (g[b, s:e, None, :] - g[b, None, s:e, :]).permute(0, 2, 1).exp()   # [t, h, s]
            blk = kk * G * beta[b, s:e, :, None]
            ref[b, s:e, :, :e - s] = blk * torch.ones(e - s, e - s, dtype=torch.bool).tril(-1)[:, None, :]
    A = chunk_scaled_dot_kkt_fwd(k, g=g, beta=beta, cu_seqlens=cu_seqlens, output_dtype=D)
    assert_rms("A", ref, A, 1e-12)
    assert chunk_scaled_dot_kkt_fwd(k.float(), g=g.float(), beta=beta.float()).dtype == torch.float32


@pytest.mark.parametrize("B,T,H,K,V,cu", CASES[1:])
def test_wy_repr_forward_and_backward(B, T, H, K, V, cu):
    """recompute_w_u_fwd / prepare_wy_repr_bwd against fp64 autograd of w = A diag(beta e^g) K,
    u = A diag(beta) V with A = (I + tril(diag(beta) K K^T G, -1))^-1 per chunk (gradients flow
    through A as well)."""
    from myfla.ops.gated_delta_rule.wy_fast import prepare_wy_repr_bwd, recompute_w_u_fwd
    from myfla.ops.utils import solve_tril
    cu_seqlens = torch.tensor(cu) if cu is not None else None
    _, k, _, v, g, _, _ = _inputs(B, T, H, K, V, cu_seqlens, 'g')
    beta = torch.rand(B, T, H, dtype=D)
    leaves = [k, v, beta, g]
    for x in leaves:
        x.requires_grad_()
    w_parts, u_parts = [], []
    for b, s0, e0 in _segments(B, T, cu_seqlens):
        ws, us = [], []
        for s in range(s0, e0, BT):
            e = min(s + BT, e0)
            kk, vv, bb, gg = k[b, s:e].transpose(0, 1), v[b, s:e].transpose(0, 1), beta[b, s:e].T, g[b, s:e].T
            G = (gg[:, :, None] - gg[:, None, :]).masked_fill(~torch.ones(e - s, e - s, dtype=torch.bool).tril(),
                                                              -float('inf')).exp()
            L = (bb[:, :, None] * (kk @ kk.transpose(-1, -2)) * G).tril(-1)
            Ainv = torch.linalg.inv(torch.eye(e - s, dtype=D) + L)
            ws.append((Ainv @ (kk * (bb * gg.exp())[..., None])).transpose(0, 1))
            us.append((Ainv @ (vv * bb[..., None])).transpose(0, 1))
        w_parts.append(torch.cat(ws, 0))
        u_parts.append(torch.cat(us, 0))
    w_ref = torch.stack(w_parts) if cu_seqlens is None else torch.cat(w_parts, 0)[None]
    u_ref = torch.stack(u_parts) if cu_seqlens is None else torch.cat(u_parts, 0)[None]
    dw, du = torch.randn_like(w_ref), torch.randn_like(u_ref)
    ((w_ref * dw).sum() + (u_ref * du).sum()).backward()

    with torch.no_grad():
        A = solve_tril(chunk_scaled_dot_kkt_fwd(k, g=g, beta=beta, cu_seqlens=cu_seqlens, output_dtype=D),
                       cu_seqlens=cu_seqlens, output_dtype=D)
        w, u = recompute_w_u_fwd(k, v, beta, A, g=g, cu_seqlens=cu_seqlens)
        dk, dv, db, dg = prepare_wy_repr_bwd(k, v, beta, A, dw, du, g=g, cu_seqlens=cu_seqlens)
    assert_rms("w", w_ref, w, 1e-12)
    assert_rms("u", u_ref, u, 1e-12)
    for name, ref, x in zip(["dk", "dv", "dbeta", "dg"], [t.grad for t in leaves], [dk, dv, db, dg]):
        assert_rms(name, ref, x, 1e-10)


@pytest.mark.parametrize("B,T,H,K,V,cu", CASES[1:])
def test_g_gamma_equals_constant_cumulative_gate(B, T, H, K, V, cu):
    """A per-head constant decay ``g_gamma`` is the scalar-gate path with g = chunk-local cumsum of
    gamma (fla's kernels build gamma * (i + 1) in-kernel)."""
    cu_seqlens = torch.tensor(cu) if cu is not None else None
    q, k, w, u, _, _, h0 = _inputs(B, T, H, K, V, cu_seqlens, 'none')
    gamma = -torch.rand(H, dtype=D)
    pos = torch.arange(T) if cu_seqlens is None else prepare_position_ids(cu_seqlens)
    g = ((pos % BT + 1).to(D)[None, :, None] * gamma).expand(B, T, H).contiguous()
    h, v_new, _ = chunk_gated_delta_rule_fwd_h(k, w, u, g=g, initial_state=h0, cu_seqlens=cu_seqlens)
    do = torch.randn(B, T, H, V, dtype=D)
    dh, _, dv2 = chunk_gated_delta_rule_bwd_dhu(q, k, w, do, torch.randn_like(do), g=g, h0=h0, scale=0.2,
                                                cu_seqlens=cu_seqlens)
    kw = dict(scale=0.2, cu_seqlens=cu_seqlens)
    assert_rms("o", chunk_fwd_o(q, k, v_new, h, g=g, **kw), chunk_fwd_o(q, k, v_new, h, g_gamma=gamma, **kw), 1e-12)
    assert_rms("dv", chunk_bwd_dv_local(q, k, do, g=g, **kw), chunk_bwd_dv_local(q, k, do, g_gamma=gamma, **kw), 1e-12)
    ref = chunk_bwd_dqkwg(q, k, v_new, do, h, dh, w=w, g=g, dv=dv2, **kw)
    out = chunk_bwd_dqkwg(q, k, v_new, do, h, dh, w=w, g_gamma=gamma, dv=dv2, **kw)
    for name, a, b in zip(["dq", "dk", "dw"], ref[:3], out[:3]):
        assert_rms(name, a, b, 1e-12)
    assert out[3] is None
