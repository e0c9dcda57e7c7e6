"""Packing padded batches into varlen layout and back, as ``fla.ops.utils.pack``.

``pack_sequence`` turns ``[B, S, ...]`` (each row holding one sequence, padded on the left or the
right) into ``[sum(lens), ...]`` in ``cu_seqlens`` order; ``unpack_sequence`` is its inverse, with
zeros at the padding. fla moves the rows with one Triton kernel in both directions (each direction's
backward is the other direction); here both are one index map over the flattened rows.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from myfla.ops.utils.index import prepare_lens
from myfla.utils import input_guard


def _padded_slots(cu_seqlens: torch.Tensor, S: int, padding_side: str) -> torch.Tensor:
    """For every packed token (in ``cu_seqlens`` order), its row ``b * S + s`` in the padded
    ``[B, S]`` layout: ``s`` is the token's position (right padding) or ``S - len + position``
    (left padding). Empty sequences take no rows."""
    cu = cu_seqlens.long()
    total = int(cu[-1].item())
    tokens = torch.arange(total, device=cu.device)
    seq = torch.searchsorted(cu[1:], tokens, right=True)      # sequence of every token
    pos = tokens - cu[:-1][seq]
    if padding_side == 'left':
        pos = pos + (S - (cu[1:] - cu[:-1]))[seq]
    return seq * S + pos


def pack_sequence_fwdbwd(
    x: torch.Tensor,
    cu_seqlens: torch.Tensor,
    padding_side: str,
) -> torch.Tensor:
    """``[B, S, ...]`` padded -> ``[cu_seqlens[-1], ...]`` packed.

    Source: fla/ops/utils/pack.py:L60-L81 (fla 0.4.0)
    Source: fla/ops/utils/pack.py:L16-L57 (fla 0.4.0)
    """
    B, S = x.shape[:2]
    slots = _padded_slots(cu_seqlens, S, padding_side)
    return x.reshape(B * S, *x.shape[2:]).index_select(0, slots)


def unpack_sequence_fwdbwd(
    x: torch.Tensor,
    cu_seqlens: torch.Tensor,
    padding_side: str,
    desired_shape: torch.Size,
) -> torch.Tensor:
    """``[cu_seqlens[-1], ...]`` packed -> ``desired_shape`` (default ``[N, longest, ...]``) padded
    with zeros.

    Source: fla/ops/utils/pack.py:L84-L108 (fla 0.4.0)
    """
    if desired_shape is None:
        desired_shape = (len(cu_seqlens) - 1, prepare_lens(cu_seqlens).max().item(), *x.shape[1:])
    y = torch.zeros(desired_shape, device=x.device, dtype=x.dtype)
    B, S = y.shape[:2]
    slots = _padded_slots(cu_seqlens, S, padding_side)
    y.view(B * S, *y.shape[2:]).index_copy_(0, slots, x)
    return y


class PackSequenceFunction(torch.autograd.Function):
    """Pack; the backward unpacks the gradient into the input's padded shape.

    Source: fla/ops/utils/pack.py:L111-L144 (fla 0.4.0)
    """

    @staticmethod
    @input_guard
    def forward(
        ctx,
        x: torch.Tensor,
        cu_seqlens: torch.Tensor,
        padding_side: str,
    ) -> torch.Tensor:
        assert padding_side in ['left', 'right']
        assert x.ndim >= 2

        ctx.cu_seqlens = cu_seqlens
        ctx.padding_side = padding_side
        ctx.desired_shape = x.shape

        y = pack_sequence_fwdbwd(
            x=x,
            cu_seqlens=cu_seqlens,
            padding_side=padding_side,
        )
        return y

    @staticmethod
    @input_guard
    def backward(ctx, dy: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        dx = unpack_sequence_fwdbwd(
            x=dy,
            cu_seqlens=ctx.cu_seqlens,
            padding_side=ctx.padding_side,
            desired_shape=ctx.desired_shape,
        )
        return (dx, *[None] * 10)


class UnpackSequenceFunction(torch.autograd.Function):
    """Unpack; the backward packs the gradient.

    Source: fla/ops/utils/pack.py:L147-L183 (fla 0.4.0)
    """

    @staticmethod
    @input_guard
    def forward(
        ctx,
        x: torch.Tensor,
        cu_seqlens: torch.Tensor,
        padding_side: str,
        desired_shape: Optional[torch.Size] = None,
    ) -> torch.Tensor:
        assert padding_side in ['left', 'right']
        assert x.ndim >= 2
        if desired_shape is not None:
            assert desired_shape[0] == cu_seqlens.shape[0] - 1
            assert desired_shape[2:] == x.shape[1:]

        ctx.cu_seqlens = cu_seqlens
        ctx.padding_side = padding_side

        y = unpack_sequence_fwdbwd(
            x=x,
            cu_seqlens=cu_seqlens,
            padding_side=padding_side,
            desired_shape=desired_shape,
        )
        return y

    @staticmethod
    @input_guard
    def backward(ctx, dy: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        dx = pack_sequence_fwdbwd(
            x=dy,
            cu_seqlens=ctx.cu_seqlens,
            padding_side=ctx.padding_side,
        )
        return dx, None, None, None


def pack_sequence(
    x: torch.Tensor,
    cu_seqlens: torch.Tensor,
    padding_side: str = 'left'
) -> torch.Tensor:
    """Source: fla/ops/utils/pack.py:L186-L195 (fla 0.4.0)"""
    return PackSequenceFunction.apply(
        x,
        cu_seqlens,
        padding_side,
    )


def unpack_sequence(
    x: torch.Tensor,
    cu_seqlens: torch.Tensor,
    padding_side: str = 'left',
    desired_shape: Optional[torch.Size] = None,
) -> torch.Tensor:
    """Source: fla/ops/utils/pack.py:L198-L209 (fla 0.4.0)"""
    return UnpackSequenceFunction.apply(
        x,
        cu_seqlens,
        padding_side,
        desired_shape,
    )
