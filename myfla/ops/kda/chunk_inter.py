"""Inter-chunk part of KDA's backward: gradients flowing through the chunk states ``h``.

Per chunk (cumulative gates ``G``, last gate ``gn``, state ``h`` ``[K, V]`` entering it, its gradient
``dh``, the corrected values ``v`` and their gradient ``dv``):
``dq = scale * exp(G) (do h^T)``, ``dk = exp(gn - G) (v dh^T)``, ``dw = -dv h^T`` and the gate
gradient ``dg = revcumsum(q dq - k dk) + exp(gn) sum_v(h dh) + sum_t(k dk)``, which is already
w.r.t. the raw (non-cumulative) gate. fla's kernel runs per (K block, chunk, head); here all chunks
and heads are batched.
"""

from __future__ import annotations

from typing import Optional

import torch

from myfla.ops.utils.chunk_grid import (
    chunks_to_grid,
    from_grid,
    grid_empty,
    last_gate,
    operand_grid,
    slab,
    slab_out,
    to_grid
)
from myfla.ops.utils.chunk_layout import chunk_slabs, get_chunk_layout
from myfla.ops.utils.dot import LOW_PRECISION, dot, operand, operand_dtype
from myfla.utils import check_shared_mem

# Source: fla/ops/kda/chunk_inter.py:L14-L14 (fla 0.4.0)
BK_LIST = [32, 64] if check_shared_mem() else [16, 32]
# Source: fla/ops/kda/chunk_inter.py:L15-L15 (fla 0.4.0)
BV_LIST = [64, 128] if check_shared_mem('ampere') else [16, 32]


def chunk_kda_bwd_dqkwg(
    q: torch.Tensor,
    k: torch.Tensor,
    w: torch.Tensor,
    v: torch.Tensor,
    h: torch.Tensor,
    g: torch.Tensor,
    do: torch.Tensor,
    dh: torch.Tensor,
    dv: torch.Tensor,
    scale: Optional[float] = None,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64
):
    """``(dq, dk, dw, dg)``: ``dq, dk`` fp32, ``dw`` in ``w.dtype``, ``dg`` in ``g.dtype``.

    Source: fla/ops/kda/chunk_inter.py:L141-L188 (fla 0.4.0)
    Source: fla/ops/kda/chunk_inter.py:L18-L138 (fla 0.4.0)
    """
    B, T, H, K, V = *k.shape, v.shape[-1]
    layout = get_chunk_layout(B, T, chunk_size, cu_seqlens, device=k.device)
    # h and dh are stored in the inputs' dtype (fla: k.new_empty / q.new_empty)
    hc = chunks_to_grid(layout, h, dtype=operand_dtype(h.dtype, h.device))       # [N, H, NC, K, V]
    dhc = chunks_to_grid(layout, dh, dtype=operand_dtype(dh.dtype, dh.device))
    qc, kc, Gc = to_grid(layout, q), to_grid(layout, k), to_grid(layout, g, 'last')
    doc, vc, dvc = operand_grid(layout, do), operand_grid(layout, v), operand_grid(layout, dv)
    dq, dk, dg, dw = (grid_empty(qc, K) for _ in range(4))
    for sl in chunk_slabs(qc):
        _dqkwg_chunks(*(slab(x, sl) for x in (qc, kc, vc, hc, Gc, doc, dhc, dvc)), scale, do.dtype, v.dtype,
                      out=tuple(slab_out(grid, sl) for grid in (dq, dk, dw, dg)))
    return (from_grid(layout, dq), from_grid(layout, dk), from_grid(layout, dw).to(w.dtype),
            from_grid(layout, dg).to(g.dtype))


def _dqkwg_chunks(q, k, v, h, G, do, dh, dv, scale, do_dtype, v_dtype, out):
    """``chunk_kda_bwd_dqkwg`` on a slab of the chunk grid (port-only helper): ``(dq, dk, dw, dg)``, each
    written by its last op into its view in ``out`` (e.g. ``slab_out``); ``v``, ``h``, ``do``, ``dh``,
    ``dv`` are dot operands, cast as fla's kernel casts them (to ``do_dtype`` / ``v_dtype``)."""
    gn = last_gate(G)                                                   # [..., K]
    h_do, h_v = operand(h, do_dtype), operand(h, v_dtype)
    dq_o, dk_o, dw_o, dg_o = out
    dq = torch.mul(dot(do, h_do.transpose(-1, -2)).mul_(G.exp()), scale, out=dq_o)
    dk = torch.mul(dot(v, operand(dh, v_dtype).transpose(-1, -2)), (gn.unsqueeze(-2) - G).exp_(), out=dk_o)
    torch.neg(dot(operand(dv, v_dtype), h_v.transpose(-1, -2)), out=dw_o)
    hdh = (h * dh).sum(-1) if h.dtype not in LOW_PRECISION else (h.float() * dh.float()).sum(-1)
    dgk = hdh.mul_(gn.exp()).add_((dk * k).sum(-2))
    dg = q * dq - k * dk
    # reverse cumsum within the chunk as one batched matmul with an upper-triangular ones matrix
    BT = dg.shape[-2]
    upper = torch.ones(BT, BT, dtype=dg.dtype, device=dg.device).triu()
    torch.add(torch.matmul(upper, dg), dgk.unsqueeze(-2), out=dg_o)
    return out
