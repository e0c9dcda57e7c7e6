"""``chunk_bwd_dv`` (fla 0.4.0 ``fla/ops/common/chunk_o.py``): the full value gradient of chunked
(gated) linear attention, checked against fp64 autograd of a per-token recurrence
``S_t = exp(g_t) S_{t-1} + k_t v_t^T``, ``o_t = scale * q_t S_t`` (raw scalar gates, a constant
per-head decay, or none), equal-length and varlen."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from myfla.ops.common.chunk_h import chunk_bwd_dh
from myfla.ops.common.chunk_o import BKV_LIST, chunk_bwd_dv

F64 = torch.float64


def recurrence(q, k, v, g, gamma, scale, lens):
    outs, pos = [], 0
    H, K, V = k.shape[2], k.shape[3], v.shape[3]
    for L in lens:
        S = q.new_zeros(H, K, V)
        for t in range(pos, pos + L):
            if g is not None:
                S = S * g[0, t].exp()[:, None, None]
            if gamma is not None:
                S = S * gamma.exp()[:, None, None]
            S = S + k[0, t][..., None] * v[0, t][:, None, :]
            outs.append(scale * (q[0, t][..., None] * S).sum(-2))
        pos += L
    return torch.stack(outs)[None]


def local_cumsum(x, lens, BT):
    out, pos = [], 0
    for L in lens:
        out += [c.cumsum(1) for c in x[:, pos:pos + L].split(BT, 1)]
        pos += L
    return torch.cat(out, 1)


@pytest.mark.parametrize("gate", ["g", "gamma", None])
@pytest.mark.parametrize("lens", [[45], [16, 1, 40]])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_chunk_bwd_dv_vs_autograd(gate, lens, dtype):
    H, K, V, BT, scale = 2, 4, 3, 16, 0.4
    T = sum(lens)
    cu = torch.tensor([0] + lens).cumsum(0) if len(lens) > 1 else None
    q, k = torch.randn(1, T, H, K, dtype=F64), torch.randn(1, T, H, K, dtype=F64)
    v = torch.randn(1, T, H, V, dtype=F64, requires_grad=True)
    g = F.logsigmoid(torch.randn(1, T, H, dtype=F64)) if gate == "g" else None
    gamma = -torch.rand(H, dtype=F64) * 0.5 if gate == "gamma" else None
    do = torch.randn(1, T, H, V, dtype=F64)
    o = recurrence(q, k, v, g, gamma, scale, lens)
    dv_ref, = torch.autograd.grad(o, v, do)

    gc = local_cumsum(g, lens, BT) if g is not None else None
    args = [t.to(dtype) for t in (q, k, do)]
    dh, _ = chunk_bwd_dh(args[0], args[1], v.detach().to(dtype), args[2], None, None, scale, g=gc,
                         g_gamma=gamma, cu_seqlens=cu, chunk_size=BT, states_in_fp32=True)
    dv = chunk_bwd_dv(args[0], args[1], args[2], dh, g=gc, g_gamma=gamma, scale=scale, cu_seqlens=cu,
                      chunk_size=BT)
    assert dv.dtype == dtype
    tol = 1e-12 if dtype == F64 else 1e-5
    torch.testing.assert_close(dv.double(), dv_ref, rtol=tol, atol=tol)


def test_chunk_bwd_dv_default_scale():
    q, k, do = torch.randn(1, 20, 1, 9, dtype=F64), torch.randn(1, 20, 1, 9, dtype=F64), torch.randn(1, 20, 1, 2, dtype=F64)
    dh = torch.zeros(1, 1, 1, 9, 2, dtype=F64)
    # no state gradient: dv = scale * triu(k q^T) do with scale = K^-0.5
    ref = 9 ** -0.5 * torch.einsum('ij,jv->iv', (k[0, :, 0] @ q[0, :, 0].T).triu(), do[0, :, 0])
    torch.testing.assert_close(chunk_bwd_dv(q, k, do, dh, chunk_size=64)[0, :, 0], ref)
    assert BKV_LIST in ([64, 128], [32, 64])
