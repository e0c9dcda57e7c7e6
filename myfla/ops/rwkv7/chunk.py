"""Chunked RWKV-7 time mixing, as ``fla.ops.rwkv7.chunk``: the DPLR delta rule with ``r`` as the
query and ``w`` as the log decay (the layer passes ``a = -kk``, ``b = kk * a``)."""

from __future__ import annotations

from typing import Optional

import torch

from myfla.ops.generalized_delta_rule import chunk_dplr_delta_rule
from myfla.ops.utils.validation import reject_head_first, warn_head_first_layout


def chunk_rwkv7(
    r: torch.Tensor,
    w: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    scale: float = 1.0,
    initial_state: torch.Tensor = None,
    output_final_state: bool = True,
    cu_seqlens: Optional[torch.LongTensor] = None,
    head_first: bool = False,
):
    """
    Args:
        r (torch.Tensor): r of shape `[B, T, H, K]`.
        w (torch.Tensor): log decay of shape `[B, T, H, K]`.
        k (torch.Tensor): k of shape `[B, T, H, K]`.
        v (torch.Tensor): v of shape `[B, T, H, V]`.
        a (torch.Tensor): a of shape `[B, T, H, K]`.
        b (torch.Tensor): b of shape `[B, T, H, K]`.
        scale (float): scale of the attention.
        initial_state (Optional[torch.Tensor]): initial state of shape `[N, H, K, V]` for `N` input
            sequences (`N == B` for equal lengths). Default: `None`.
        output_final_state (Optional[bool]): whether to output the final state `[N, H, K, V]`.
            Default: `True`.
        cu_seqlens (torch.LongTensor): cumulative sequence lengths `[N+1]` for variable-length
            inputs, consistent with the FlashAttention API.
        head_first (Optional[bool]): deprecated; `True` raises.

    Source: fla/ops/rwkv7/chunk.py:L12-L78 (fla 0.4.0)
    """
    reject_head_first(head_first)
    warn_head_first_layout(r)
    return chunk_dplr_delta_rule(
        q=r,
        k=k,
        v=v,
        a=a,
        b=b,
        gk=w,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        cu_seqlens=cu_seqlens,
        head_first=head_first,
    )
