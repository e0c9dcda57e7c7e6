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
from myfla.ops.utils.dot import dot, dot_add, operand, operand_dtype, rowdot
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
    A_c = to_grid(layout, A, dtype=operand_dtype(A.dtype, A.device))    # [NC, NH, BT, BT]
    b_c = to_grid(layout, beta, dtype=cdt).unsqueeze(-1)
    if A.dtype != cdt:
        # low-precision inputs: the rows are scaled in fp32 and rounded to the input dtype before the
        # dot with A (in k's dtype), as the kernel does
        u = dot(A_c, operand(to_grid(layout, v, dtype=cdt) * b_c, v.dtype))
        if g is not None:
            b_c = b_c * torch.exp(to_grid(layout, g, fill='last', dtype=cdt)).unsqueeze(-1)
        w = dot(A_c, operand(to_grid(layout, k, dtype=cdt) * b_c, k.dtype))
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

    def operand_grid(x):
        return to_grid(layout, x, dtype=operand_dtype(x.dtype, x.device))

    k_c = to_grid(layout, k, dtype=cdt)
    v_c = to_grid(layout, v, dtype=cdt)
    b_c = to_grid(layout, beta, dtype=cdt).unsqueeze(-1)                # [NC, NH, BT, 1]
    At = operand_grid(A).transpose(-1, -2)                              # A in its stored dtype
    dw_c, du_c = operand_grid(dw), operand_grid(du)
    if g is not None:
        g_exp = torch.exp(to_grid(layout, g, fill='last', dtype=cdt)).unsqueeze(-1)
        bg = b_c * g_exp                                                # beta * exp(g), [.., BT, 1]
    else:
        bg = b_c

    # through w = A (bg * k) and u = A (b * v): dA = dw (bg k)^T + du (b v)^T, the rows rounded to
    # the gradients' / v's dtype as in the kernel
    dA = dot(dw_c, operand(k_c * bg, dw.dtype).transpose(-1, -2))
    dA = dot_add(dA, du_c, operand(v_c * b_c, v.dtype).transpose(-1, -2), out=dA)
    dkbg = dot(At, dw_c)
    dvb = dot(At, du_c)
    dkbg_k = rowdot(dkbg, k_c)                                          # sum_k dkbg * k, [.., BT]
    db = dkbg_k * g_exp.squeeze(-1) if g is not None else dkbg_k
    db = db + rowdot(dvb, v_c)
    dg = dkbg_k * bg.squeeze(-1) if g is not None else None
    dk = dkbg.mul_(bg)
    dv = dvb.mul_(b_c)

    # through the inverse: dL = -A^T dA A^T, kept on the strict lower triangle (each product takes
    # dA rounded to A's dtype, as the kernel)
    dA.tril_(-1)
    dA = dot(At, operand(dot(operand(dA, A.dtype), At), A.dtype))
    if g is not None:
        dA.mul_(gate_ratio(layout, g, cdt))
    dA.neg_().tril_(-1)
    dA = operand(dA, k.dtype)                                           # fla: b_dA.to(k.dtype)

    # through L = tril(beta_i k_i . k_j G_ij):  dk_j += sum_i dA_ij beta_i k_i,  dk_i += beta_i dA_i. k
    k_op = operand_grid(k)
    kb = operand(k_c * b_c, k.dtype)                                    # rows scaled by beta_i
    dk = dot_add(dk, dA.transpose(-1, -2), kb, out=dk)
    dkb = dot(dA, k_op)
    db = db + rowdot(dkb, k_c)
    dk.addcmul_(dkb, b_c)
    if g is not None:
        AdA = dot(kb, k_op.transpose(-1, -2)).mul_(dA)
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
