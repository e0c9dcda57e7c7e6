"""The two GLA chunk helpers KDA uses: the chunked output and the gradient of the intra scores.

Per chunk with cumulative key gates ``G`` and the chunk's starting state ``h``:
``o = scale * (q exp(G)) h + tril(A) v`` and ``dA = scale * tril(do v^T)``. fla runs one kernel per
(chunk, head); here both are batched matmuls over the padded chunk grid.
"""

from __future__ import annotations

from typing import Optional

import torch

from myfla.ops.kda.chunk_intra import chunks_to_grid, from_grid, to_grid
from myfla.ops.utils.chunk_layout import get_chunk_layout


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
    qg = to_grid(layout, q) * (scale * to_grid(layout, g, 'last').exp())
    o = qg @ chunks_to_grid(layout, h) + to_grid(layout, A).tril() @ to_grid(layout, v)
    return from_grid(layout, o).to(v.dtype)


def chunk_gla_bwd_dA(
    v: torch.Tensor,
    do: torch.Tensor,
    scale: float,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64
):
    """``dA = scale * tril(do @ v^T)`` per chunk, fp32 ``[B, T, H, BT]``.

    Source: fla/ops/gla/chunk.py:L879-L908 (fla 0.4.0)
    Source: fla/ops/gla/chunk.py:L498-L546 (fla 0.4.0)
    """
    B, T, H, V = v.shape
    BT = chunk_size
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=v.device)
    dA = (to_grid(layout, do) @ to_grid(layout, v).transpose(-1, -2)).tril() * scale
    return from_grid(layout, dA)
