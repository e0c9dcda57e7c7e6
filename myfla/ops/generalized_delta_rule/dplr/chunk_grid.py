"""Port-only plumbing of the DPLR chunk ops (fla has no counterpart).

fla's kernels hand each other token-layout tensors ``[B, T, H, ...]`` and per-chunk states
``[B, NT, H, K, V]``. The torch port computes on the chunk grid ``[NC, N*H, BT, ...]`` of
``myfla.ops.common.chunk_delta_h`` (chunk-major, so the state recurrence reads contiguous
per-chunk slices and everything else is one batched op over all chunks of all heads). Each fla
function of ``fla.ops.generalized_delta_rule.dplr`` is ported as a grid-level core (``*_grid``)
plus the token-layout function with fla's name and signature that converts around it;
``ChunkDPLRDeltaRuleFunction`` chains the cores in fla's order without leaving the grid.

Padding: token tensors enter the grid zero-filled, cumulative gates 'last'-filled (a chunk's
last valid gate is repeated into its padding), so pads contribute nothing and ``g_last`` is the
grid's last row, as the kernels' masked loads and ``last_idx`` make it.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from myfla.ops.common.chunk_delta_h import chunks_from_grid, chunks_to_grid, from_grid, to_grid
from myfla.ops.utils.chunk_layout import ChunkLayout, get_chunk_layout

__all__ = [
    'chunk_cumsum', 'grid_view', 'chunks_from_grid', 'chunks_to_grid', 'from_grid', 'to_grid', 'get_chunk_layout', 'ChunkLayout',
    'grid_layout', 'keep_lower_', 'keep_score_triangles_', 'rounding', 'strict_tril', 'tril',
]


def rounding(dtype: torch.dtype, compute_dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> x`` rounded to ``dtype`` and back to ``compute_dtype``: the rounding fla's kernels
    apply where they store an intermediate in the inputs' (half) precision; the identity when
    nothing is lost. The function's ``dtype`` attribute names the precision it rounds to."""
    if torch.promote_types(dtype, compute_dtype) == dtype:
        def keep(x):
            return x
        keep.dtype = compute_dtype
        return keep

    def round_trip(x):
        return x.to(dtype).to(compute_dtype)
    round_trip.dtype = dtype                    # what the rounded values must fit (see intra_blocks)
    return round_trip


def tril(x: torch.Tensor) -> torch.Tensor:
    """Lower triangle with the diagonal (the kernels' ``i >= j`` masks)."""
    return torch.tril(x)


def strict_tril(x: torch.Tensor) -> torch.Tensor:
    """Strictly lower triangle (the kernels' ``i > j`` masks)."""
    return torch.tril(x, -1)


_LOWER_MASKS: dict = {}


def keep_lower_(x: torch.Tensor, strict: bool = False, scale: float = 1.0) -> torch.Tensor:
    """``x`` ``[..., n, m * n]`` times ``scale``, each of its ``m`` side-by-side ``[n, n]`` blocks kept
    on its lower triangle (strictly lower if ``strict``), in place. A multiply by a cached 0/1 mask:
    on CPU an order of magnitude faster than ``tril_`` of a batch of small blocks or a broadcast
    ``masked_fill_``, and equal to them for the finite entries it is used on."""
    n, width = x.shape[-2:]
    key = (n, width, strict, x.dtype, str(x.device))
    mask = _LOWER_MASKS.get(key)
    if mask is None:
        i = torch.arange(n, device=x.device)
        block = (i.view(-1, 1) > i.view(1, -1)) if strict else (i.view(-1, 1) >= i.view(1, -1))
        mask = _LOWER_MASKS[key] = block.repeat(1, width // n).to(x.dtype)
    return x.mul_(mask if scale == 1.0 else mask * scale)


def keep_score_triangles_(P: torch.Tensor) -> torch.Tensor:
    """``P`` ``[..., 2n, 2n]`` = ``[[A_qk, A_qb], [A_ak, A_ab]]`` kept on its four triangles in place
    (the top blocks with their diagonals, the bottom ones strictly): ``keep_lower_`` of both halves in
    one multiply by a cached 0/1 mask."""
    n2 = P.shape[-1]
    key = ('scores', n2, P.dtype, str(P.device))
    mask = _LOWER_MASKS.get(key)
    if mask is None:
        n = n2 // 2
        i = torch.arange(n, device=P.device)
        top = (i.view(-1, 1) >= i.view(1, -1)).repeat(1, 2)
        bottom = (i.view(-1, 1) > i.view(1, -1)).repeat(1, 2)
        mask = _LOWER_MASKS[key] = torch.cat((top, bottom), 0).to(P.dtype)
    return P.mul_(mask)


def grid_view(layout: ChunkLayout, x: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """``x`` ``[1, T, H, *rest]`` seen as the chunk grid ``[NC, H, BT, *rest]`` without a copy (a strided
    view: elementwise ops read and write it directly), where the grid is a pure relabelling: one
    sequence, no padding, ``x`` contiguous and already in ``dtype``. None otherwise (``to_grid``)."""
    if layout.varlen or layout.pad or layout.B != 1 or x.dtype != dtype or not x.is_contiguous():
        return None
    H, rest = x.shape[2], x.shape[3:]
    return x.view(layout.NC, layout.BT, H, *rest).transpose(1, 2)


_ONES_TRIANGLES: dict = {}


def chunk_cumsum(x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Chunk-local cumulative sum of ``x`` ``[..., BT, K]`` along the chunk (``reverse``: from the
    chunk's end, ``tl.cumsum(..., reverse=True)``), as one batched product with a triangle of ones:
    on CPU as fast as ``torch.cumsum`` along a middle dim at small ``K`` and faster with fast matmul
    units, and the reverse sum needs no flipped copies."""
    n = x.shape[-2]
    key = (n, reverse, x.dtype, str(x.device))
    ones = _ONES_TRIANGLES.get(key)
    if ones is None:
        ones = torch.ones(n, n, dtype=x.dtype, device=x.device)
        ones = _ONES_TRIANGLES[key] = torch.triu(ones) if reverse else torch.tril(ones)
    if x.dim() == 4 and not x.is_contiguous() and x.transpose(1, 2).is_contiguous():
        # a grid view of token layout ([NC, H, BT, K] over [NC, BT, H, K]): one product per chunk
        # with all heads side by side, [BT, BT] @ [BT, H * K], read in place and returned as the same
        # kind of view (matmul would first copy the view into a contiguous grid)
        NC, H, _, K = x.shape
        tokens = x.transpose(1, 2).reshape(NC, n, H * K)
        out = torch.bmm(ones.expand(NC, n, n), tokens)
        return out.view(NC, n, H, K).transpose(1, 2)
    return torch.matmul(ones, x)


def grid_layout(x: torch.Tensor, chunk_size: int, cu_seqlens: Optional[torch.LongTensor]) -> ChunkLayout:
    """The chunk layout of a ``[B, T, H, ...]`` tensor."""
    B, T = x.shape[:2]
    return get_chunk_layout(B, T, chunk_size, cu_seqlens, device=x.device)
