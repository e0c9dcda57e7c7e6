"""Token layout <-> chunk grid for the slab-wise passes of KDA and GLA (port-only helper; fla's kernels
index tokens directly and have no counterpart).

A grid has the logical shape ``[N, H, NC, BT, *rest]`` (sequences, heads, chunks, chunk positions).
The passes walk it in slabs of whole chunks (``chunk_slabs``) and hand each slab to batched code as
``[nc, N, H, BT, *rest]``: any leading axes are batch axes there. Where a slab spans several chunks
(few heads, or a GPU's single slab), input grids are stored chunk-major (memory
``[NC, N, H, BT, *rest]``): every slab of them is then a contiguous view, and the one copy that
reorders (and casts) a tensor is made by ``to_grid``, once per pass inside a ``grid_cache()`` scope.
Where a slab is a single chunk (many heads on a CPU), the grid stays a view of token-ordered memory
and each slab is copied where it is used, straight into cache. Output grids (``grid_empty``) are
stored in token order, so that slab results land where ``from_grid`` returns them without another
copy.
"""

from __future__ import annotations

from typing import Optional

import torch

from myfla.ops.common.chunk_delta_h import memo, share_grid, shared_grid
from myfla.ops.utils.chunk_layout import ChunkLayout, slab_chunk_heads
from myfla.ops.utils.dot import operand_dtype
from myfla.ops.utils.workspace import new_empty


def _chunk_major(grid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``grid`` (logical ``[N, H, NC, ...]``) in ``dtype`` with chunk-major memory; no copy when it
    already is (e.g. fla's per-chunk states of a single sequence)."""
    cm = grid.movedim(2, 0)
    if cm.dtype != dtype or not cm.is_contiguous():
        # from the workspace pool: a pooled buffer is handed out again only once nothing holds it
        cm = new_empty(cm.shape, dtype, cm.device).copy_(cm)
    return cm.movedim(0, 2)


def to_grid(layout: ChunkLayout, x: torch.Tensor, fill: str = 'zero',
            dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``[B, T, H, *rest]`` -> ``[N, H, NC, BT, *rest]`` in ``dtype`` (default fp32; fp64 stays fp64),
    stored chunk-major unless slabs are single chunks (see the module docstring); built once per
    tensor inside a ``grid_cache()`` scope, where chunk-major grids are also shared with the state
    recurrence's ``[NC, N*H, BT, ...]`` grids (same memory order) in both directions. Callers never
    modify it in place (it may be shared)."""
    dtype = torch.promote_types(x.dtype, torch.float32) if dtype is None else dtype

    def build():
        N, H, rest = layout.N, x.shape[2], x.shape[3:]
        shared = shared_grid(layout, x, dtype)
        if shared is not None:                              # built or produced by the state recurrence
            return shared.view(layout.NC, N, H, layout.BT, *rest).movedim(0, 2)
        grid = layout.pack(x, fill).movedim(3, 1)
        per_slab = slab_chunk_heads(x.device)
        if per_slab and per_slab // max(1, N * H) <= 1:
            return grid.to(dtype)                           # one-chunk slabs: copied when used
        grid = _chunk_major(grid, dtype)
        cm = grid.movedim(2, 0)
        if cm.is_contiguous():
            share_grid(layout, x, cm.reshape(layout.NC, N * H, layout.BT, *rest))
        return grid
    return memo(('chunk_grid', fill, dtype), (x, layout), build)


def operand_grid(layout: ChunkLayout, x: torch.Tensor) -> torch.Tensor:
    """``x`` on the grid as a dot operand: its own dtype (see ``myfla.ops.utils.dot``)."""
    return to_grid(layout, x, dtype=operand_dtype(x.dtype, x.device))


def chunks_to_grid(layout: ChunkLayout, h: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """fla's per-chunk ``[B, NT, H, *rest]`` -> ``[N, H, NC, *rest]`` in ``dtype`` (default fp32 or
    wider), stored chunk-major."""
    dtype = torch.promote_types(h.dtype, torch.float32) if dtype is None else dtype
    return _chunk_major(layout.pack_chunks(h).movedim(2, 1), dtype)


def chunks_from_grid(layout: ChunkLayout, hc: torch.Tensor) -> torch.Tensor:
    """``[N, H, NC, *rest]`` -> fla's per-chunk ``[B, NT, H, *rest]``."""
    return layout.unpack_chunks(hc.movedim(1, 2))


def grid_empty(ref: torch.Tensor, *rest: int, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Uninitialised ``[N, H, NC, BT, *rest]`` grid (first four dims of ``ref``; ``ref``'s dtype unless
    given) whose memory is in token order ``[N, NC, BT, H, *rest]``, so ``from_grid`` returns it without
    a copy."""
    N, H, NC, BT = ref.shape[:4]
    return new_empty((N, NC, BT, H, *rest), dtype or ref.dtype, ref.device).movedim(3, 1)


def from_grid(layout: ChunkLayout, xc: torch.Tensor) -> torch.Tensor:
    """``[N, H, NC, BT, *rest]`` -> contiguous ``[B, T, H, *rest]`` (no copy when ``xc``'s memory is
    already in token order, see ``grid_empty``, and no padding is dropped)."""
    x = layout.unpack(xc.movedim(1, 3))
    return x if x.is_contiguous() else x.contiguous()


def slab(xc: torch.Tensor, sl: slice) -> torch.Tensor:
    """Chunks ``sl`` of a grid as a contiguous ``[nc, N, H, *rest]`` batch: a view of a chunk-major
    grid (never modify it in place), a copy otherwise. Derived temporaries are then contiguous too,
    so batched matmuls take them without copying transposed operands."""
    v = xc[:, :, sl].movedim(2, 0)
    return v if v.is_contiguous() else v.contiguous()


def store(xc: torch.Tensor, sl: slice, value: torch.Tensor) -> None:
    """Write a slab result ``[nc, N, H, *rest]`` into chunks ``sl`` of the grid ``xc``."""
    xc[:, :, sl] = value.movedim(0, 2)


def slab_out(xc: torch.Tensor, sl: slice) -> torch.Tensor:
    """Chunks ``sl`` of the grid ``xc`` as a ``[nc, N, H, *rest]`` view (strided where ``xc`` is in
    token order, see ``grid_empty``): a slab's last op writes its result there with ``out=``, which
    spares ``store``'s copy (one pass over the result). Elementwise ops and reductions only:
    ``torch.matmul(..., out=)`` copies into such a view itself, and ``torch.tril(..., out=)`` writes
    wrong values into one whose batch dims do not collapse (torch 2.13); ``tril_`` in place is right."""
    return xc[:, :, sl].movedim(2, 0)


def last_gate(G: torch.Tensor) -> torch.Tensor:
    """Gate at each chunk's last valid token (``[..., BT, K]`` -> ``[..., K]``); the grid's 'last' fill
    repeats that token into the padding, so it is the last row."""
    return G[..., -1, :]
