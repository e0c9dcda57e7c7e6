"""Cumulative sums of log-space gates, as ``fla.ops.utils.cumsum``: chunk-local and global.

Chunk-local: each chunk of ``chunk_size`` tokens restarts the sum (fla's chunked algorithms keep
gates chunk-local so that ``exp(g_i - g_j)`` stays bounded). The Triton kernels run one program per
(chunk, head); here all chunks of all heads are one ``cumsum`` over a padded chunk grid.
Global: one running sum per sequence (varlen: restarting at every ``cu_seqlens`` boundary), which
fla's kernels carry from block to block; here it is one ``cumsum`` over the sequence axis.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from myfla.ops.utils.chunk_layout import get_chunk_layout
from myfla.ops.utils.workspace import out_buffer
from myfla.utils import check_shared_mem, input_guard

# Block sizes of the Triton vector kernel's autotuner (kept for API parity; unused by torch code).
# Source: fla/ops/utils/cumsum.py:L13-L13 (fla 0.4.0)
BS_LIST = [32, 64] if check_shared_mem() else [16, 32]


def _chunk_cumsum(g: torch.Tensor, chunk_size: int, reverse: bool, scale: Optional[float],
                  cu_seqlens: Optional[torch.Tensor], head_first: bool,
                  output_dtype: Optional[torch.dtype], vector: bool) -> torch.Tensor:
    """Shared body of the scalar and vector variants, in fp32 (fp64 for fp64 gates, whose result then
    stays fp64 so that fp64 checks are exact), with each kernel's own arithmetic: the scalar kernel
    takes a running sum (reverse: ``sum - cumsum + x``), the vector kernel multiplies every chunk by
    a triangular matrix of ones (``tl.dot(m_s, b_s)`` without TF32)."""
    acc_dtype = torch.promote_types(g.dtype, torch.float32)
    out_dtype = output_dtype or g.dtype
    if acc_dtype == torch.float64:
        out_dtype = torch.promote_types(out_dtype, acc_dtype)
    x = g.transpose(1, 2) if head_first else g                      # -> [B, T, H, (S)]
    B, T = x.shape[:2]
    layout = get_chunk_layout(B, T, chunk_size, cu_seqlens, device=g.device)
    xc = layout.pack(x.to(acc_dtype), fill='zero')                 # [N, NC, BT, H, (S)]
    N, NC, BT = xc.shape[:3]
    if vector:
        ones = torch.ones(BT, BT, dtype=acc_dtype, device=g.device)
        mask = ones.triu() if reverse else ones.tril()              # m_s of the kernel
        flat = xc.reshape(N * NC, BT, math.prod(xc.shape[3:]))       # explicit: N * NC may be 0
        oc = torch.matmul(mask, flat, out=out_buffer(flat.shape, acc_dtype, g.device)).view(xc.shape)
    else:
        oc = xc.cumsum(2)
        if reverse:
            oc = xc.sum(2, keepdim=True) - oc + xc
    if scale is not None:
        oc = oc * scale
    o = layout.unpack(oc)
    if head_first:
        o = o.transpose(1, 2)
    return o.to(out_dtype).contiguous()


def chunk_local_cumsum_scalar(
    g: torch.Tensor,
    chunk_size: int,
    reverse: bool = False,
    scale: float = None,
    cu_seqlens: Optional[torch.Tensor] = None,
    head_first: bool = False,
    output_dtype: Optional[torch.dtype] = torch.float
) -> torch.Tensor:
    """Chunk-local (reverse) cumulative sum of a head-wise gate ``[B, T, H]`` (``[B, H, T]`` if
    ``head_first``), optionally scaled; accumulated in fp32.

    Source: fla/ops/utils/cumsum.py:L254-L286 (fla 0.4.0)
    Source: fla/ops/utils/cumsum.py:L16-L67 (fla 0.4.0)
    """
    if head_first:
        B, H, T = g.shape
    else:
        B, T, H = g.shape
    assert chunk_size == 2**(chunk_size.bit_length()-1), "chunk_size must be a power of 2"
    return _chunk_cumsum(g, chunk_size, reverse, scale, cu_seqlens, head_first, output_dtype, vector=False)


def chunk_local_cumsum_vector(
    g: torch.Tensor,
    chunk_size: int,
    reverse: bool = False,
    scale: float = None,
    cu_seqlens: Optional[torch.Tensor] = None,
    head_first: bool = False,
    output_dtype: Optional[torch.dtype] = torch.float
) -> torch.Tensor:
    """Chunk-local (reverse) cumulative sum of a key-wise gate ``[B, T, H, S]`` (``[B, H, T, S]``
    if ``head_first``), optionally scaled; accumulated in fp32.

    Source: fla/ops/utils/cumsum.py:L289-L326 (fla 0.4.0)
    Source: fla/ops/utils/cumsum.py:L70-L127 (fla 0.4.0)
    """
    if head_first:
        B, H, T, S = g.shape
    else:
        B, T, H, S = g.shape
    assert chunk_size == 2**(chunk_size.bit_length()-1), "chunk_size must be a power of 2"
    return _chunk_cumsum(g, chunk_size, reverse, scale, cu_seqlens, head_first, output_dtype, vector=True)


def _global_cumsum(s: torch.Tensor, reverse: bool, cu_seqlens: Optional[torch.Tensor],
                   scale: Optional[float], head_first: bool,
                   output_dtype: Optional[torch.dtype]) -> torch.Tensor:
    """Shared body of the global scalar and vector variants: a running sum over each sequence in
    fp32 (fp64 for fp64 inputs, whose result stays fp64), reversed with ``reverse``, times
    ``scale``. Varlen sequences are laid out one per row of a padded grid (zero padding after the
    last token leaves both directions of the sum unchanged)."""
    acc_dtype = torch.promote_types(s.dtype, torch.float32)
    out_dtype = output_dtype or s.dtype
    if acc_dtype == torch.float64:
        out_dtype = torch.promote_types(out_dtype, acc_dtype)
    x = s.transpose(1, 2) if head_first else s                      # -> [B, T, H, (S)]
    B, T = x.shape[:2]
    if cu_seqlens is None:
        xs, layout = x.to(acc_dtype), None
        dim = 1
    else:
        longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item()) if len(cu_seqlens) > 1 else 0
        layout = get_chunk_layout(B, T, max(longest, 1), cu_seqlens, device=s.device)
        xs = layout.pack(x.to(acc_dtype), fill='zero')               # [N, 1, L, H, (S)]
        dim = 2
    o = xs.flip(dim).cumsum(dim).flip(dim) if reverse else xs.cumsum(dim)
    if scale is not None:
        o = o * scale
    if layout is not None:
        o = layout.unpack(o)
    if head_first:
        o = o.transpose(1, 2)
    return o.to(out_dtype).contiguous()


@input_guard
def chunk_global_cumsum_scalar(
    s: torch.Tensor,
    reverse: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    scale: float = None,
    head_first: bool = False,
    output_dtype: Optional[torch.dtype] = torch.float
) -> torch.Tensor:
    """Global (reverse) cumulative sum of a head-wise gate ``[B, T, H]`` (``[B, H, T]`` if
    ``head_first``) over each sequence, optionally scaled; accumulated in fp32.

    Source: fla/ops/utils/cumsum.py:L329-L357 (fla 0.4.0)
    Source: fla/ops/utils/cumsum.py:L130-L187 (fla 0.4.0)
    """
    if head_first:
        B, H, T = s.shape
    else:
        B, T, H = s.shape
    return _global_cumsum(s, reverse, cu_seqlens, scale, head_first, output_dtype)


@input_guard
def chunk_global_cumsum_vector(
    s: torch.Tensor,
    reverse: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    scale: float = None,
    head_first: bool = False,
    output_dtype: Optional[torch.dtype] = torch.float
) -> torch.Tensor:
    """Global (reverse) cumulative sum of a key-wise gate ``[B, T, H, S]`` (``[B, H, T, S]`` if
    ``head_first``) over each sequence, optionally scaled; accumulated in fp32.

    Source: fla/ops/utils/cumsum.py:L360-L391 (fla 0.4.0)
    Source: fla/ops/utils/cumsum.py:L190-L251 (fla 0.4.0)
    """
    if head_first:
        B, H, T, S = s.shape
    else:
        B, T, H, S = s.shape
    return _global_cumsum(s, reverse, cu_seqlens, scale, head_first, output_dtype)


@input_guard
def chunk_global_cumsum(
    s: torch.Tensor,
    reverse: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    scale: float = None,
    head_first: bool = False,
    output_dtype: Optional[torch.dtype] = torch.float
) -> torch.Tensor:
    """Dispatch to the scalar (3-D) or vector (4-D) global cumsum.

    Source: fla/ops/utils/cumsum.py:L394-L428 (fla 0.4.0)
    """
    if cu_seqlens is not None:
        assert s.shape[0] == 1, "Only batch size 1 is supported when cu_seqlens are provided"
    if len(s.shape) == 3:
        return chunk_global_cumsum_scalar(
            s=s,
            reverse=reverse,
            cu_seqlens=cu_seqlens,
            scale=scale,
            head_first=head_first,
            output_dtype=output_dtype
        )
    elif len(s.shape) == 4:
        return chunk_global_cumsum_vector(
            s=s,
            reverse=reverse,
            cu_seqlens=cu_seqlens,
            scale=scale,
            head_first=head_first,
            output_dtype=output_dtype
        )
    else:
        raise ValueError(
            f"Unsupported input shape {s.shape}, "
            f"which should be [B, T, H]/[B, T, H, D] if `head_first=False` "
            f"or [B, H, T]/[B, H, T, D] otherwise"
        )



@input_guard
def chunk_local_cumsum(
    g: torch.Tensor,
    chunk_size: int,
    reverse: bool = False,
    scale: float = None,
    cu_seqlens: Optional[torch.Tensor] = None,
    head_first: bool = False,
    output_dtype: Optional[torch.dtype] = torch.float,
    **kwargs
) -> torch.Tensor:
    """Dispatch to the scalar (3-D gate) or vector (4-D gate) chunk-local cumsum.

    Source: fla/ops/utils/cumsum.py:L431-L469 (fla 0.4.0)
    """
    if cu_seqlens is not None:
        assert g.shape[0] == 1, "Only batch size 1 is supported when cu_seqlens are provided"
    if len(g.shape) == 3:
        return chunk_local_cumsum_scalar(
            g=g,
            chunk_size=chunk_size,
            reverse=reverse,
            scale=scale,
            cu_seqlens=cu_seqlens,
            head_first=head_first,
            output_dtype=output_dtype
        )
    elif len(g.shape) == 4:
        return chunk_local_cumsum_vector(
            g=g,
            chunk_size=chunk_size,
            reverse=reverse,
            scale=scale,
            cu_seqlens=cu_seqlens,
            head_first=head_first,
            output_dtype=output_dtype
        )
    else:
        raise ValueError(
            f"Unsupported input shape {g.shape}, "
            f"which should be (B, T, H, D) if `head_first=False` "
            f"or (B, H, T, D) otherwise"
        )
