"""Chunk mean pooling, as ``fla.ops.utils.pooling``: the mean of every chunk of ``chunk_size``
tokens (the last, partial chunk of a sequence averages its own tokens), ``[B, T, H, D]`` ->
``[B, NT, H, D]``. fla runs one Triton program per (feature block, chunk, head) in each direction;
here each direction is one reduction (or broadcast) over the padded chunk grid, in fp32.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from myfla.ops.utils.chunk_layout import get_chunk_layout
from myfla.utils import accumulation_dtype, autocast_custom_bwd, autocast_custom_fwd, input_guard


def _chunk_counts(layout, dtype: torch.dtype, device) -> torch.Tensor:
    """Tokens in every chunk of the grid, ``[N, NC, 1, 1]`` (at least 1, so empty chunks stay finite)."""
    return layout.valid_mask(device).sum(-1).clamp(min=1).to(dtype)[..., None, None]


def mean_pooling_fwd(
    x: torch.Tensor,
    chunk_size: int,
    cu_seqlens: Optional[torch.LongTensor] = None
) -> torch.Tensor:
    """Per-chunk means ``[B, NT, H, D]`` in ``x``'s dtype (summed in fp32).

    Source: fla/ops/utils/pooling.py:L108-L130 (fla 0.4.0)
    Source: fla/ops/utils/pooling.py:L14-L58 (fla 0.4.0)
    """
    B, T, H, D = x.shape
    layout = get_chunk_layout(B, T, chunk_size, cu_seqlens, device=x.device)
    acc = accumulation_dtype(x)
    xc = layout.pack(x.to(acc), fill='zero')                         # [N, NC, BT, H, D]
    o = xc.sum(2) / _chunk_counts(layout, acc, x.device)
    return layout.unpack_chunks(o).to(x.dtype)


def mean_pooling_bwd(
    do: torch.Tensor,
    batch_size: int,
    seq_len: int,
    chunk_size: int,
    cu_seqlens: Optional[torch.LongTensor] = None
) -> torch.Tensor:
    """``dx[t] = do[chunk(t)] / len(chunk(t))``, ``[B, T, H, D]`` in ``do``'s dtype.

    Source: fla/ops/utils/pooling.py:L133-L157 (fla 0.4.0)
    Source: fla/ops/utils/pooling.py:L61-L105 (fla 0.4.0)
    """
    B, T, H, D = batch_size, seq_len, *do.shape[-2:]
    layout = get_chunk_layout(B, T, chunk_size, cu_seqlens, device=do.device)
    acc = accumulation_dtype(do)
    doc = layout.pack_chunks(do.to(acc)) / _chunk_counts(layout, acc, do.device)   # [N, NC, H, D]
    dxc = doc.unsqueeze(2).expand(-1, -1, layout.BT, -1, -1)
    return layout.unpack(dxc).to(do.dtype)


class MeanPoolingFunction(torch.autograd.Function):
    """Chunk mean pooling with the backward :func:`mean_pooling_bwd`.

    Source: fla/ops/utils/pooling.py:L160-L189 (fla 0.4.0)
    """

    @staticmethod
    @input_guard
    @autocast_custom_fwd
    def forward(
        ctx,
        x: torch.Tensor,
        chunk_size: int,
        cu_seqlens: Optional[torch.LongTensor] = None
    ) -> torch.Tensor:
        o = mean_pooling_fwd(x, chunk_size, cu_seqlens)
        ctx.batch_size = x.shape[0]
        ctx.seq_len = x.shape[1]
        ctx.chunk_size = chunk_size
        ctx.cu_seqlens = cu_seqlens
        return o

    @staticmethod
    @input_guard
    @autocast_custom_bwd
    def backward(
        ctx, do
    ) -> Tuple[torch.Tensor, None, None]:
        batch_size = ctx.batch_size
        seq_len = ctx.seq_len
        chunk_size = ctx.chunk_size
        cu_seqlens = ctx.cu_seqlens
        dx = mean_pooling_bwd(do, batch_size, seq_len, chunk_size, cu_seqlens)
        return dx, None, None


def mean_pooling(
    x: torch.Tensor,
    chunk_size: int,
    cu_seqlens: Optional[torch.LongTensor] = None,
    head_first: bool = False
) -> torch.Tensor:
    """Mean of every chunk of ``chunk_size`` tokens, ``[B, T, H, D]`` -> ``[B, NT, H, D]``
    (``[B, H, T, D]`` -> ``[B, H, NT, D]`` with ``head_first``; varlen: ``B == 1``, chunks restart
    at every sequence and ``NT`` counts all of them).

    Source: fla/ops/utils/pooling.py:L192-L209 (fla 0.4.0)
    """
    if head_first:
        x = x.transpose(1, 2)
    if cu_seqlens is not None:
        if x.shape[0] != 1:
            raise ValueError(
                f"The batch size is expected to be 1 rather than {x.shape[0]} when using `cu_seqlens`."
                f"Please flatten variable-length inputs before processing."
            )
    o = MeanPoolingFunction.apply(x, chunk_size, cu_seqlens)
    if head_first:
        o = o.transpose(1, 2)
    return o
