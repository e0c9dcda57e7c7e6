"""WY representation of the gated delta rule's chunk updates, as ``fla.ops.gated_delta_rule.wy_fast``.

With ``A = (I + tril(beta K K^T G, -1))^-1`` per chunk (``solve_tril``), the chunk's delta-rule
updates collapse to ``w = A (beta exp(g) K)`` and ``u = A (beta V)``; ``prepare_wy_repr_bwd`` is the
backward of that map, including the gradient through the inverse.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from myfla.ops.common.chunk_delta_h import from_grid, gate_ratio, to_grid
from myfla.ops.utils.chunk_layout import get_chunk_layout
from myfla.utils import accumulation_dtype


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
    cdt = accumulation_dtype(k, v, beta, A)
    A_c = to_grid(layout, A, dtype=cdt)                                 # [NC, NH, BT, BT]
    b_c = to_grid(layout, beta, dtype=cdt).unsqueeze(-1)
    if v.dtype != cdt or k.dtype != cdt:
        # low-precision inputs: scale the rows and round them to the input dtype, as the kernel does
        vb = (to_grid(layout, v, dtype=cdt) * b_c).to(v.dtype).to(cdt)
        u = torch.matmul(A_c, vb)
        if g is not None:
            b_c = b_c * torch.exp(to_grid(layout, g, fill='last', dtype=cdt)).unsqueeze(-1)
        w = torch.matmul(A_c, (to_grid(layout, k, dtype=cdt) * b_c).to(k.dtype).to(cdt))
    else:
        # A (diag(beta) X) = (A diag(beta)) X: scaling A's columns touches a [BT, BT] block instead
        # of a [BT, K] one
        Ab = A_c * b_c.transpose(-1, -2)
        u = torch.matmul(Ab, to_grid(layout, v, dtype=cdt))
        if g is not None:
            Ab.mul_(torch.exp(to_grid(layout, g, fill='last', dtype=cdt)).unsqueeze(-2))
        w = torch.matmul(Ab, to_grid(layout, k, dtype=cdt))
    return from_grid(layout, w, H, k.dtype), from_grid(layout, u, H, v.dtype)


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
    cdt = accumulation_dtype(k, v, beta, A, dw, du)
    k_c = to_grid(layout, k, dtype=cdt)
    v_c = to_grid(layout, v, dtype=cdt)
    b_c = to_grid(layout, beta, dtype=cdt).unsqueeze(-1)                # [NC, NH, BT, 1]
    At = to_grid(layout, A, dtype=cdt).transpose(-1, -2)
    dw_c = to_grid(layout, dw, dtype=cdt)
    du_c = to_grid(layout, du, dtype=cdt)
    if g is not None:
        g_exp = torch.exp(to_grid(layout, g, fill='last', dtype=cdt)).unsqueeze(-1)
        bg = b_c * g_exp                                                # beta * exp(g), [.., BT, 1]
    else:
        bg = b_c

    def flat(x):
        return x.flatten(0, 1)

    # through w = A (bg * k) and u = A (b * v): dA = (dw k^T) diag(bg) + (du v^T) diag(b)
    dA = torch.matmul(dw_c, k_c.transpose(-1, -2)).mul_(bg.transpose(-1, -2))
    dA.addcmul_(torch.matmul(du_c, v_c.transpose(-1, -2)), b_c.transpose(-1, -2))
    dkbg = torch.matmul(At, dw_c)
    dvb = torch.matmul(At, du_c)
    dkbg_k = torch.linalg.vecdot(dkbg, k_c)                             # sum_k dkbg * k, [.., BT]
    db = dkbg_k * g_exp.squeeze(-1) if g is not None else dkbg_k
    db = db + torch.linalg.vecdot(dvb, v_c)
    dg = dkbg_k * bg.squeeze(-1) if g is not None else None
    dk = dkbg.mul_(bg)
    dv = dvb.mul_(b_c)

    # through the inverse: dL = -A^T dA A^T, kept on the strict lower triangle
    dA.tril_(-1)
    dA = torch.matmul(At, torch.matmul(dA, At))
    if g is not None:
        dA.mul_(gate_ratio(layout, g, cdt))
    dA.neg_().tril_(-1)

    # through L = tril(beta_i k_i . k_j G_ij):  dk_j += sum_i dA_ij beta_i k_i,  dk_i += beta_i dA_i. k
    dAb = dA * b_c                                                      # rows scaled by beta_i
    flat(dk).baddbmm_(flat(dAb).transpose(-1, -2), flat(k_c))
    dkb = torch.matmul(dA, k_c)
    db = db + torch.linalg.vecdot(dkb, k_c)
    dk.addcmul_(dkb, b_c)
    if g is not None:
        AdA = torch.matmul(k_c, k_c.transpose(-1, -2)).mul_(dAb)
        dg = dg + AdA.sum(-1) - AdA.sum(-2)

    dk = from_grid(layout, dk, H, k.dtype)
    dv = from_grid(layout, dv, H, v.dtype)
    db = from_grid(layout, db, H, beta.dtype)
    if dg is not None:
        dg = from_grid(layout, dg, H, g.dtype)
    return dk, dv, db, dg


# Source: fla/ops/gated_delta_rule/wy_fast.py:L301-L301 (fla 0.4.0)
bwd_prepare_wy_repr = prepare_wy_repr_bwd

# Source: fla/ops/gated_delta_rule/wy_fast.py:L303-L303 (fla 0.4.0)
fwd_recompute_w_u = recompute_w_u_fwd
