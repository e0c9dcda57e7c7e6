"""WY representation of the gated delta rule's chunk updates, as ``fla.ops.gated_delta_rule.wy_fast``.

With ``A = (I + tril(beta K K^T G, -1))^-1`` per chunk (``solve_tril``), the chunk's delta-rule
updates collapse to ``w = A (beta exp(g) K)`` and ``u = A (beta V)``; ``prepare_wy_repr_bwd`` is the
backward of that map, including the gradient through the inverse.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from myfla.ops.common.chunk_delta_h import compute_dtype_of, from_grid, to_grid
from myfla.ops.utils.chunk_layout import get_chunk_layout


def recompute_w_u_fwd(
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    A: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    cu_seqlens: Optional[torch.LongTensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``w = A @ (k * beta * exp(g))`` (``k.dtype``) and ``u = A @ (v * beta)`` (``v.dtype``) per chunk.

    Source: fla/ops/gated_delta_rule/wy_fast.py:L215-L251 (fla 0.4.0)
    Source: fla/ops/gated_delta_rule/wy_fast.py:L15-L83 (fla 0.4.0)
    """
    B, T, H, K, V = *k.shape, v.shape[-1]
    BT = A.shape[-1]
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=k.device)
    if layout.NC == 0:
        return torch.empty_like(k), torch.empty_like(v)
    cdt = compute_dtype_of(k, v, beta, A)
    A_c = to_grid(layout, A, dtype=cdt)                                 # [NC, NH, BT, BT]
    b_c = to_grid(layout, beta, dtype=cdt).unsqueeze(-1)
    vb = to_grid(layout, v, dtype=cdt) * b_c
    if v.dtype != cdt:
        vb = vb.to(v.dtype).to(cdt)                                     # the kernel rounds v*beta to v's dtype
    u = torch.matmul(A_c, vb)
    kb = to_grid(layout, k, dtype=cdt) * b_c
    if g is not None:
        kb = kb * torch.exp(to_grid(layout, g, fill='last', dtype=cdt)).unsqueeze(-1)
    w = torch.matmul(A_c, kb)
    return from_grid(layout, w, H).to(k.dtype).contiguous(), from_grid(layout, u, H).to(v.dtype).contiguous()


def prepare_wy_repr_bwd(
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    A: torch.Tensor,
    dw: torch.Tensor,
    du: torch.Tensor,
    g: torch.Tensor = None,
    cu_seqlens: Optional[torch.LongTensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of ``k``, ``v``, ``beta`` and the chunk-local cumulative ``g`` from ``dw``, ``du``,
    through ``w``/``u`` and through ``A = (I + L)^-1`` (``dL = -A^T dA A^T`` on the strict lower
    triangle, ``L = tril(beta K K^T exp(g_i - g_j), -1)``). Returns ``(dk, dv, db, dg)``.

    Source: fla/ops/gated_delta_rule/wy_fast.py:L254-L298 (fla 0.4.0)
    Source: fla/ops/gated_delta_rule/wy_fast.py:L86-L212 (fla 0.4.0)
    """
    B, T, H, K, V = *k.shape, v.shape[-1]
    BT = 64
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=k.device)
    if layout.NC == 0:
        return (torch.empty_like(k), torch.empty_like(v), torch.empty_like(beta),
                torch.empty_like(g) if g is not None else None)
    cdt = compute_dtype_of(k, v, beta, A, dw, du)
    k_c = to_grid(layout, k, dtype=cdt)
    v_c = to_grid(layout, v, dtype=cdt)
    b_c = to_grid(layout, beta, dtype=cdt).unsqueeze(-1)                # [NC, NH, BT, 1]
    At = to_grid(layout, A, dtype=cdt).transpose(-1, -2)
    dw_c = to_grid(layout, dw, dtype=cdt)
    du_c = to_grid(layout, du, dtype=cdt)
    if g is not None:
        g_c = to_grid(layout, g, fill='last', dtype=cdt)
        g_exp = torch.exp(g_c).unsqueeze(-1)
        bg = b_c * g_exp
    else:
        bg = b_c
    kbg = k_c * bg
    vb = v_c * b_c

    # through w = A kbg and u = A vb
    dA = torch.matmul(dw_c, kbg.transpose(-1, -2)) + torch.matmul(du_c, vb.transpose(-1, -2))
    dkbg = torch.matmul(At, dw_c)
    dk = dkbg * bg
    kg = k_c * g_exp if g is not None else k_c
    db = (dkbg * kg).sum(-1)
    dg = (dkbg * kbg).sum(-1) if g is not None else None
    dvb = torch.matmul(At, du_c)
    dv = dvb * b_c
    db = db + (dvb * v_c).sum(-1)

    # through the inverse: dL = -A^T dA A^T, kept on the strict lower triangle
    strict = torch.ones(BT, BT, dtype=torch.bool, device=k.device).tril(-1)
    dA = dA.masked_fill(~strict, 0)
    dA = torch.matmul(At, torch.matmul(dA, At))
    if g is not None:
        dA = dA * torch.exp(g_c.unsqueeze(-1) - g_c.unsqueeze(-2))
    dA = (-dA).masked_fill(~strict, 0)

    # through L = tril(beta_i k_i . k_j G_ij)
    kb = k_c * b_c
    dkb = torch.matmul(dA, k_c)
    db = db + (dkb * k_c).sum(-1)
    dk = dk + torch.matmul(dA.transpose(-1, -2), kb) + dkb * b_c
    if g is not None:
        AdA = dA * torch.matmul(kb, k_c.transpose(-1, -2))
        dg = dg + AdA.sum(-1) - AdA.sum(-2)

    dk = from_grid(layout, dk, H).to(k.dtype).contiguous()
    dv = from_grid(layout, dv, H).to(v.dtype).contiguous()
    db = from_grid(layout, db, H).to(beta.dtype).contiguous()
    if dg is not None:
        dg = from_grid(layout, dg, H).to(g.dtype).contiguous()
    return dk, dv, db, dg


# Source: fla/ops/gated_delta_rule/wy_fast.py:L301-L301 (fla 0.4.0)
bwd_prepare_wy_repr = prepare_wy_repr_bwd

# Source: fla/ops/gated_delta_rule/wy_fast.py:L303-L303 (fla 0.4.0)
fwd_recompute_w_u = recompute_w_u_fwd
