"""KDA building blocks against fp64 math written from the formulas (independent of the port):
the gated intra-chunk products and their gradients, chunk_kda_fwd_intra's Aqk/Akk, recompute_w_u_fwd,
and the GLA output/dA helpers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from myfla.ops.gla.chunk import chunk_gla_bwd_dA, chunk_gla_fwd_o_gk
from myfla.ops.kda.chunk_intra import GatedTril, chunk_kda_fwd_intra
from myfla.ops.kda.wy_fast import recompute_w_u_fwd
from tests.numerics import assert_rms


def pairwise_scores(X, Y, G, strict=False):
    """sum_d X_id Y_jd exp(G_id - G_jd) for j <= i (j < i when strict), fp64, pairwise."""
    BT = G.shape[-2]
    mask = torch.ones(BT, BT, dtype=torch.bool).tril(-1 if strict else 0)
    E = (G.unsqueeze(-2) - G.unsqueeze(-3)).masked_fill(~mask[..., None], float('-inf')).exp()
    return torch.einsum('...ik,...jk,...ijk->...ij', X, Y, E)


@pytest.mark.parametrize("gate_scale", [1.0, 30.0])
def test_gated_tril_products_and_gradients(gate_scale):
    """Values and gradients of the bisected reference-gate factorisation; gate_scale=30 drives the
    chunk-local cumulative gates to about -1500, where unbounded exp() would overflow."""
    shape = (2, 3, 64, 20)
    X, Y = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    G = (F.logsigmoid(torch.randn(shape, dtype=torch.float64)) * gate_scale).cumsum(-2)
    leaves = [x.clone().requires_grad_() for x in (X, Y, G)]
    A_ref = pairwise_scores(*leaves)
    dA = torch.randn(A_ref.shape, dtype=torch.float64).tril()
    dX_ref, dY_ref, dG_ref = torch.autograd.grad((A_ref * dA).sum(), leaves)

    tri = GatedTril(G)
    A, A2 = tri.scores([X, 2 * X], Y)
    assert torch.isfinite(A).all()
    assert_rms("A", A_ref, A, 1e-12)
    assert_rms("A2", 2 * A_ref, A2, 1e-12)
    (dX,) = tri.grad_rows([dA], Y)
    dY = tri.grad_cols([dA], [X])
    dY2 = tri.grad_cols([dA, dA], [X, -3 * X])
    assert_rms("dY two operands", -2 * dY_ref, dY2, 1e-12)
    assert_rms("dX", dX_ref, dX, 1e-12)
    assert_rms("dY", dY_ref, dY, 1e-12)
    assert_rms("dG", dG_ref, X * dX - Y * dY, 1e-12)


@pytest.mark.parametrize("T", [17, 64, 130])
def test_fwd_intra_and_wy(T):
    B, H, K, V, BT = 2, 2, 24, 16, 64
    q, k = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1)
    v, beta = torch.randn(B, T, H, V), torch.rand(B, T, H).sigmoid()
    g = F.logsigmoid(torch.randn(B, T, H, K))
    NT = -(-T // BT)
    pad = NT * BT - T
    # chunk-local cumulative gate
    gp = F.pad(g, (0, 0, 0, 0, 0, pad)).view(B, NT, BT, H, K).cumsum(2)
    gk = gp.reshape(B, NT * BT, H, K)[:, :T]
    Aqk, Akk_inv = chunk_kda_fwd_intra(q, k, gk=gk, beta=beta, scale=0.3)
    assert Aqk.dtype == torch.float32 and Aqk.shape == (B, T, H, BT)

    def chunks(x):
        return F.pad(x.double(), (0, 0) * (x.dim() - 2) + (0, pad)).unflatten(1, (NT, BT)).movedim(3, 1)

    qc, kc, vc, Gc = chunks(q), chunks(k), chunks(v), chunks(gk)
    bc = chunks(beta.unsqueeze(-1)).squeeze(-1)
    Aqk_ref = 0.3 * pairwise_scores(qc, kc, Gc)
    L = bc.unsqueeze(-1) * pairwise_scores(kc, kc, Gc, strict=True)
    inv_ref = torch.linalg.inv(torch.eye(BT, dtype=torch.float64) + L)

    def tokens(xc):
        return xc.movedim(1, 3).flatten(1, 2)[:, :T]

    assert_rms("Aqk", tokens(Aqk_ref), Aqk, 1e-6)
    assert_rms("Akk_inv", tokens(inv_ref), Akk_inv, 1e-6)

    w, u, qg, kg = recompute_w_u_fwd(k, v, beta, Akk_inv, q=q, gk=gk)
    w_ref = inv_ref @ (kc * bc.unsqueeze(-1) * Gc.exp())
    u_ref = inv_ref @ (vc * bc.unsqueeze(-1))
    last = torch.tensor([min((i + 1) * BT, T) - 1 - i * BT for i in range(NT)])
    G_last = Gc[:, :, torch.arange(NT), last].unsqueeze(-2)
    assert_rms("w", tokens(w_ref), w, 1e-6)
    assert_rms("u", tokens(u_ref), u, 1e-6)
    assert_rms("qg", tokens(qc * Gc.exp()), qg, 1e-6)
    assert_rms("kg", tokens(kc * (G_last - Gc).exp()), kg, 1e-6)

    # GLA output with per-chunk states h and its dA
    h = torch.randn(B, NT, H, K, V)
    o = chunk_gla_fwd_o_gk(q, v, gk, Aqk, h, scale=0.3)
    o_ref = 0.3 * (qc * Gc.exp()) @ h.double().movedim(2, 1) + Aqk_ref @ vc
    assert_rms("o", tokens(o_ref), o, 1e-6)
    do = torch.randn(B, T, H, V)
    dA = chunk_gla_bwd_dA(v, do, scale=0.3)
    dA_ref = 0.3 * (chunks(do) @ vc.transpose(-1, -2)).tril()
    assert_rms("dA", tokens(dA_ref), dA, 1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spread,dense", [(40.0, True), (79.5, True), (400.0, False)])
def test_intra_scores_and_grads_both_paths(dtype, spread, dense):
    """chunk_intra's slab helpers against fp64 pairwise math, on the single-reference (dense) path
    and on the bisection it falls back to when a chunk's gates span more than DENSE_GATE_RANGE
    (``spread``: the widest per-channel range of the cumulative gates in a chunk). At 79.5 the
    factors reach exp(+-39.75) and products above the diagonal overflow fp32: they must be dropped,
    not masked."""
    from myfla.ops.kda.chunk_intra import DENSE_GATE_RANGE, dense_factors, intra_grads, intra_scores

    torch.manual_seed(0)
    shape = (2, 3, 64, 32)
    q, k = torch.randn(shape, dtype=torch.float64), F.normalize(torch.randn(shape, dtype=torch.float64), dim=-1)
    G = F.logsigmoid(torch.randn(shape, dtype=torch.float64)).cumsum(-2)
    G = G * (spread / (G.amax(-2) - G.amin(-2)).max())
    assert (dense_factors(G.to(dtype)) is not None) == dense == (spread <= DENSE_GATE_RANGE)
    beta = torch.rand(shape[:-1], dtype=torch.float64)
    dAqk, dAkk = torch.randn(shape[:-1] + (64,), dtype=torch.float64), torch.randn(shape[:-1] + (64,), dtype=torch.float64)

    leaves = [x.clone().requires_grad_() for x in (q, beta.unsqueeze(-1) * k, k)]      # q, rows of Akk, columns
    Aqk_ref = pairwise_scores(leaves[0], leaves[2], G)
    Akk_ref = pairwise_scores(leaves[1], leaves[2], G, strict=True)
    # the upper triangles of dA are never read; fla's backward kernel reads dAkk on and below the
    # diagonal (o_i >= j, fla/ops/kda/chunk_intra.py:L300, L369), although Akk itself is strict
    Akk_bwd = pairwise_scores(leaves[1], leaves[2], G)
    loss = (Aqk_ref * dAqk.tril()).sum() + (Akk_bwd * dAkk.tril()).sum()
    dq_ref, dk_rows_ref, dk_cols_ref = torch.autograd.grad(loss, leaves)

    # fp32: exp(G_i - G_j) carries the rounding of G (about |G| * 6e-8) on top of the dots' own
    tol = 1e-12 if dtype == torch.float64 else 1e-6 + 6e-8 * spread
    cast = [x.to(dtype) for x in (q, k, beta, G, dAqk, dAkk)]
    qd, kd, bd, Gd, dAqk_d, dAkk_d = cast
    Aqk, Akk = intra_scores(qd, kd, bd, Gd, 0.5)
    assert torch.isfinite(Aqk).all() and torch.isfinite(Akk).all()
    assert_rms("Aqk", 0.5 * Aqk_ref.detach(), Aqk, tol)
    assert_rms("Akk", Akk_ref.detach(), Akk, tol)
    # garbage above the diagonal must not leak in; dAkk's diagonal is read (chunk_kda's own is 0)
    nan_above = torch.full_like(dAqk_d, float('nan')).triu(1)
    dq, dk_rows, dk_cols = intra_grads(qd, kd, bd.unsqueeze(-1), Gd, dAqk_d + nan_above, dAkk_d.tril() + nan_above)
    assert_rms("dq", dq_ref, dq, tol)
    assert_rms("dk_rows", dk_rows_ref, dk_rows, tol)
    assert_rms("dk_cols", dk_cols_ref, dk_cols, tol)
