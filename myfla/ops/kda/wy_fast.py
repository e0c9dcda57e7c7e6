"""WY representation of KDA's chunked delta rule: ``w``, ``u`` (and gated ``q``/``k``) and its backward.

With ``A = (I + Akk)^-1`` from ``chunk_kda_fwd_intra``: ``u = A (beta v)``, ``w = A (beta k exp(G))``,
``qg = q exp(G)`` and ``kg = k exp(G_last - G)`` (``G_last`` the chunk's last cumulative gate). fla
runs one kernel per direction over (chunk, head) programs; here each is a few batched matmuls over
the padded chunk grid.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from myfla.ops.utils.chunk_grid import from_grid, grid_empty, last_gate, operand_grid, slab, slab_out, store, to_grid
from myfla.ops.utils.chunk_layout import chunk_slabs, get_chunk_layout
from myfla.ops.utils.dot import dot, dot_add, operand, rowdot


def recompute_w_u_fwd(
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    A: torch.Tensor,
    q: Optional[torch.Tensor] = None,
    gk: Optional[torch.Tensor] = None,
    cu_seqlens: Optional[torch.LongTensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(w, u, qg, kg)``; ``qg`` is None without ``q``, ``kg`` None without ``gk`` (then ``w`` uses no
    gate). Dtypes follow ``k``, ``v``, ``q``, ``k`` as fla's ``empty_like`` outputs.

    Source: fla/ops/kda/wy_fast.py:L213-L255 (fla 0.4.0)
    Source: fla/ops/kda/wy_fast.py:L15-L105 (fla 0.4.0)
    """
    B, T, H, K, V = *k.shape, v.shape[-1]
    BT = A.shape[-1]
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=k.device)
    Ac, bc = operand_grid(layout, A), to_grid(layout, beta).unsqueeze(-1)
    kc, vc = to_grid(layout, k), to_grid(layout, v)
    u, w = grid_empty(kc, V), grid_empty(kc, K)
    qc = to_grid(layout, q) if (q is not None and gk is not None) else None
    Gc = to_grid(layout, gk, 'last') if gk is not None else None
    qg = grid_empty(kc, K) if qc is not None else None
    kg = grid_empty(kc, K) if gk is not None else None
    for sl in chunk_slabs(kc):
        k_s, b_s, A_s = slab(kc, sl), slab(bc, sl), slab(Ac, sl)
        # rows scaled in fp32 and rounded to the input dtype before the dot with A (in k's dtype)
        store(u, sl, dot(A_s, operand(slab(vc, sl) * b_s, v.dtype)))
        kb = k_s * b_s
        if Gc is not None:
            G_s = slab(Gc, sl)
            decay = G_s.exp()
            # the gated inputs land in their grids directly (no store copy)
            if qg is not None:
                torch.mul(slab(qc, sl), decay, out=slab_out(qg, sl))
            torch.mul((last_gate(G_s).unsqueeze(-2) - G_s).exp_(), k_s, out=slab_out(kg, sl))
            kb.mul_(decay)
        store(w, sl, dot(A_s, operand(kb, k.dtype)))
    u = from_grid(layout, u).to(v.dtype)
    w = from_grid(layout, w).to(k.dtype)
    if qg is not None:
        qg = from_grid(layout, qg).to(q.dtype)
    if kg is not None:
        kg = from_grid(layout, kg).to(k.dtype)
    return w, u, qg, kg


def prepare_wy_repr_bwd(
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    gk: torch.Tensor,
    A: torch.Tensor,
    dw: torch.Tensor,
    du: torch.Tensor,
    cu_seqlens: Optional[torch.LongTensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of ``recompute_w_u_fwd``: ``(dk, dv, db, dg, dA)`` where ``dg`` is w.r.t. the cumulative
    gate and ``dA`` w.r.t. the strictly lower ``Akk`` before the inverse
    (``dAkk = -A^T (dA_inv) A^T`` masked to ``i > j``). ``dk, db, dg, dA`` are fp32, ``dv`` in ``v.dtype``.

    Source: fla/ops/kda/wy_fast.py:L258-L304 (fla 0.4.0)
    Source: fla/ops/kda/wy_fast.py:L108-L210 (fla 0.4.0)
    """
    B, T, H, K, V = *k.shape, v.shape[-1]
    BT = 64
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=k.device)
    Ac, bc = operand_grid(layout, A), to_grid(layout, beta)
    kc, vc, Gc = to_grid(layout, k), to_grid(layout, v), to_grid(layout, gk, 'last')
    dwc, duc = operand_grid(layout, dw), operand_grid(layout, du)
    dk, dv, dg = grid_empty(kc, K), grid_empty(kc, V), grid_empty(kc, K)
    db, dA = grid_empty(kc), grid_empty(kc, BT)
    for sl in chunk_slabs(kc):
        _wy_bwd_chunks(*(slab(x, sl) for x in (Ac, bc, kc, vc, Gc, dwc, duc)), dtypes=(A.dtype, v.dtype, dw.dtype),
                       out=tuple(slab_out(grid, sl) for grid in (dk, dv, db, dg, dA)))
    return (from_grid(layout, dk), from_grid(layout, dv).to(v.dtype), from_grid(layout, db),
            from_grid(layout, dg), from_grid(layout, dA))


def _wy_bwd_chunks(A, beta, k, v, G, dw, du, dtypes, out):
    """``prepare_wy_repr_bwd`` on a slab of the chunk grid (port-only helper): ``(dk, dv, db, dg, dA)``,
    each written by its last op into its view in ``out`` (e.g. ``slab_out``). ``A``, ``dw``, ``du`` are
    dot operands; ``dtypes`` are the dtypes of ``A``, ``v`` and ``dw`` that fla's casts round to."""
    A_dtype, v_dtype, dw_dtype = dtypes
    At = A.transpose(-1, -2)
    b = beta.unsqueeze(-1)
    decay = G.exp()
    kbg = k * b * decay
    vb = operand(v * b, v_dtype)
    dA_inv = dot(dw, operand(kbg, dw_dtype).transpose(-1, -2))
    dA_inv = dot_add(dA_inv, du, vb.transpose(-1, -2), out=dA_inv)      # in place: see chunk_delta_h._prefill
    dkbg = dot(At, dw)
    dvb = dot(At, du)
    dk_o, dv_o, db_o, dg_o, dA_o = out
    torch.mul(kbg, dkbg, out=dg_o)
    torch.add(rowdot(dkbg, k * decay), rowdot(dvb, v), out=db_o)
    torch.mul(dkbg.mul_(decay), b, out=dk_o)
    torch.mul(dvb, b, out=dv_o)
    # through the inverse, each product taking dA rounded to A's dtype (fla: b_dA.to(b_A.dtype))
    dA = dot(operand(dA_inv.tril_(-1), A_dtype), At)
    # (negated into its view, then the triangle kept in place: torch.tril(..., out=) writes wrong values
    # into a view whose batch dims do not collapse, as these token-order views, torch 2.13)
    torch.neg(dot(At, operand(dA, A_dtype)), out=dA_o).tril_(-1)
    return out
