"""``beta * K K^T`` within every chunk, as ``fla.ops.common.chunk_scaled_dot_kkt``."""

from __future__ import annotations

from typing import Optional

import torch

from myfla.ops.common.chunk_delta_h import from_grid, gate_ratio, to_grid
from myfla.ops.utils.chunk_layout import get_chunk_layout
from myfla.ops.utils.dot import dot, operand_dtype
from myfla.utils import accumulation_dtype


def chunk_scaled_dot_kkt_fwd(
    k: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    beta: Optional[torch.Tensor] = None,
    cu_seqlens: Optional[torch.LongTensor] = None,
    chunk_size: int = 64,
    output_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    r"""Compute ``A[i, j] = beta_i * (k_i . k_j) * exp(g_i - g_j)`` for ``j < i`` inside each chunk
    (zero elsewhere), shape ``[B, T, H, BT]``: row ``t`` holds token ``t``'s row of its chunk.

    ``k`` ``[B, T, H, K]``; ``g`` the chunk-local cumulative gate ``[B, T, H]`` (optional);
    ``beta`` ``[B, T, H]``.

    Source: fla/ops/common/chunk_scaled_dot_kkt.py:L78-L126 (fla 0.4.0)
    Source: fla/ops/common/chunk_scaled_dot_kkt.py:L15-L75 (fla 0.4.0)
    """
    B, T, H, K = k.shape
    BT = chunk_size
    layout = get_chunk_layout(B, T, BT, cu_seqlens, device=k.device)
    if layout.NC == 0:
        return torch.empty(B, T, H, BT, device=k.device, dtype=output_dtype)
    cdt = accumulation_dtype(k, g, beta)
    k_c = to_grid(layout, k, dtype=operand_dtype(k.dtype, k.device))   # [NC, NH, BT, K]
    A = dot(k_c, k_c.transpose(-1, -2))                                 # k's dtype, fp32 accumulation
    if g is not None:
        A.mul_(gate_ratio(layout, g, cdt))
    if beta is not None:
        A.mul_(to_grid(layout, beta, dtype=cdt).unsqueeze(-1))
    A.tril_(-1)
    return from_grid(layout, A, H, output_dtype)
