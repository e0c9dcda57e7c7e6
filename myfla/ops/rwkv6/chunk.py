"""Chunk-local cumulative gates of ``fla.ops.rwkv6.chunk`` (the part the DPLR delta rule uses).

Within every chunk of ``BT`` tokens, ``gi`` is the inclusive and ``ge`` the exclusive cumulative sum
of the log gate along time (fla multiplies by triangular ones matrices; here one ``cumsum`` over the
chunk grid, all chunks of all heads at once).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from myfla.ops.common.chunk_delta_h import from_grid, to_grid
from myfla.ops.utils.chunk_layout import get_chunk_layout
from myfla.utils import accumulation_dtype


def cumsum_grid(g: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Port-only core on the chunk grid ``[..., BT, K]`` (zero-padded): ``(gi, ge)``; padding slots
    repeat the chunk's last inclusive sum, as the kernel's ``last_idx`` reads it."""
    gi = g.cumsum(-2)
    return gi, gi - g


def chunk_rwkv6_fwd_cumsum(
    g: torch.Tensor,
    chunk_size: int,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``(gi, ge)``, the inclusive and exclusive chunk-local cumulative sums of ``g`` ``[B, T, H, S]``
    (fp32; fp64 for fp64 input).

    Source: fla/ops/rwkv6/chunk.py:L80-L104 (fla 0.4.0)
    Source: fla/ops/rwkv6/chunk.py:L28-L77 (fla 0.4.0)
    """
    B, T, H, S = g.shape
    dtype = accumulation_dtype(g)
    layout = get_chunk_layout(B, T, chunk_size, cu_seqlens, device=g.device)
    if layout.NC == 0:
        return torch.empty_like(g, dtype=dtype), torch.empty_like(g, dtype=dtype)
    gi, ge = cumsum_grid(to_grid(layout, g, dtype=dtype))
    return from_grid(layout, gi, H), from_grid(layout, ge, H)
