"""The two GLA chunk helpers KDA uses: the chunked output and the gradient of the intra scores.

Per chunk with cumulative key gates ``G`` and the chunk's starting state ``h``:
``o = scale * (q exp(G)) h + tril(A) v`` and ``dA = scale * tril(do v^T)``. fla runs one kernel per
(chunk, head); here both are batched matmuls over the padded chunk grid.
"""

from __future__ import annotations

from typing import Optional

import torch

from myfla.ops.utils.chunk_layout import ChunkLayout, chunk_slabs, get_chunk_layout
from myfla.ops.utils.workspace import new_empty


def _to_grid(layout: ChunkLayout, x: torch.Tensor, fill: str = 'zero') -> torch.Tensor:
    """``[B, T, H, *rest]`` -> ``[N, H, NC, BT, *rest]``, fp32 or wider."""
    return layout.pack(x.to(torch.promote_types(x.dtype, torch.float32)), fill).movedim(3, 1)


def _from_grid(layout: ChunkLayout, xc: torch.Tensor) -> torch.Tensor:
    """``[N, H, NC, BT, *rest]`` -> contiguous ``[B, T, H, *rest]``."""
    x = layout.unpack(xc.movedim(1, 3))
    return x if x.is_contiguous() else x.contiguous()


def chunk_gla_fwd_o_gk(
    q: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    A: torch.Tensor,
    h: torch.Tensor,
    scale: float,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64
):
    """``o = scale * (q exp(g)) @ h[chunk] + tril(A) @ v`` in ``v.dtype``; ``A`` ``[B, T, H, BT]`` (it
    already carries ``scale``), ``h`` ``[B, NT, H, K, V]``.

    Source: fla/ops/gla/chunk.py:L842-L876 (fla 0.4.0)
    Source: fla/ops/gla/chunk.py:L282-L359 (fla 0.4.0)
    """
    B, T, H, K, V = *q.shape, v.shape[-1]
    BT = chunk_size
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=q.device)
    qc, Gc, Ac, vc = _to_grid(layout, q), _to_grid(layout, g, 'last'), _to_grid(layout, A), _to_grid(layout, v)
    hc = layout.pack_chunks(h.to(qc.dtype)).movedim(2, 1)               # [N, H, NC, K, V]
    N, H, NC, BT = qc.shape[:4]
    o = new_empty((N, NC, BT, H, V), qc.dtype, qc.device).movedim(3, 1)  # token-order memory
    for sl in chunk_slabs(qc):
        q_s, G_s, A_s, v_s, h_s = (x[:, :, sl].contiguous() for x in (qc, Gc, Ac, vc, hc))
        # out of place: a contiguous slice is the caller's own memory
        qg = G_s.exp().mul_(q_s).mul_(scale)
        o[:, :, sl] = torch.baddbmm(
            (A_s.tril() @ v_s).flatten(0, 2), qg.flatten(0, 2), h_s.flatten(0, 2)
        ).view(q_s.shape[:-1] + v_s.shape[-1:])
    return _from_grid(layout, o).to(v.dtype)


def chunk_gla_bwd_dA(
    v: torch.Tensor,
    do: torch.Tensor,
    scale: float,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64
):
    """``dA = scale * tril(do @ v^T)`` per chunk, fp32 ``[B, T, H, BT]`` (fp64 for fp64 inputs).

    Source: fla/ops/gla/chunk.py:L879-L908 (fla 0.4.0)
    Source: fla/ops/gla/chunk.py:L498-L546 (fla 0.4.0)
    """
    B, T, H, V = v.shape
    BT = chunk_size
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=v.device)
    doc, vc = _to_grid(layout, do), _to_grid(layout, v)
    N, H, NC = doc.shape[:3]
    # the grid is already fp32 or wider: fp64 stays fp64
    dA = new_empty((N, NC, BT, H, BT), doc.dtype, doc.device).movedim(3, 1)   # token-order memory
    for sl in chunk_slabs(doc):
        d_s, v_s = (x[:, :, sl].contiguous() for x in (doc, vc))
        dA[:, :, sl] = (d_s @ v_s.transpose(-1, -2)).tril_().mul_(scale)
    return _from_grid(layout, dA)
