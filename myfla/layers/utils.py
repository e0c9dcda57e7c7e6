"""Padding helpers of the layers: drop padded tokens of a masked batch (flattening it into one
varlen sequence with ``cu_seqlens``) and scatter the results back (after flash-attn's bert_padding)."""

from __future__ import annotations

from typing import Tuple

import torch
from einops import rearrange, repeat

from myfla.ops.utils.index import prepare_cu_seqlens_from_mask, prepare_lens_from_mask
from myfla.utils import tensor_cache


class IndexFirstAxis(torch.autograd.Function):
    """``x[indices]`` along the first axis, as a gather; the backward scatters into zeros.

    Source: fla/layers/utils.py:L15-L43 (fla 0.4.0)
    """

    @staticmethod
    def forward(ctx, x, indices):
        ctx.save_for_backward(indices)
        assert x.ndim >= 2
        ctx.first_axis_dim, other_shape = x.shape[0], x.shape[1:]
        flat = rearrange(x, "b ... -> b (...)")
        rows = torch.gather(flat, 0, repeat(indices, "z -> z d", d=flat.shape[1]))
        return rows.reshape(-1, *other_shape)

    @staticmethod
    def backward(ctx, do):
        (indices,) = ctx.saved_tensors
        assert do.ndim >= 2
        other_shape = do.shape[1:]
        do = rearrange(do, "b ... -> b (...)")
        dx = torch.zeros([ctx.first_axis_dim, do.shape[1]], device=do.device, dtype=do.dtype)
        dx.scatter_(0, repeat(indices, "z -> z d", d=do.shape[1]), do)
        return dx.reshape(ctx.first_axis_dim, *other_shape), None


# Source: fla/layers/utils.py:L46-L46 (fla 0.4.0)
index_first_axis = IndexFirstAxis.apply


class IndexPutFirstAxis(torch.autograd.Function):
    """Rows of ``x`` written at ``indices`` of a zero tensor with ``first_axis_dim`` rows; the
    backward gathers them back.

    Source: fla/layers/utils.py:L49-L68 (fla 0.4.0)
    """

    @staticmethod
    def forward(ctx, x, indices, first_axis_dim):
        ctx.save_for_backward(indices)
        assert indices.ndim == 1
        assert x.ndim >= 2
        y = torch.zeros(first_axis_dim, *x.shape[1:], device=x.device, dtype=x.dtype)
        y[indices] = x
        return y

    @staticmethod
    def backward(ctx, do):
        (indices,) = ctx.saved_tensors
        return do[indices], None, None


# Source: fla/layers/utils.py:L71-L71 (fla 0.4.0)
index_put_first_axis = IndexPutFirstAxis.apply


@tensor_cache
def get_unpad_data(
    attention_mask: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, int]:
    """Indexing data to unpad and repad a masked batch.

    Args:
        attention_mask: bool or int ``[batch_size, seq_len]``, 1 for valid tokens, 0 for padding.

    Returns:
        indices: positions of the valid tokens in the flattened ``[batch_size * seq_len]`` input.
        cu_seqlens: cumulative valid lengths, ``[batch_size + 1]`` (int32).
        max_seqlen_in_batch: the longest valid length (int).

    Source: fla/layers/utils.py:L74-L98 (fla 0.4.0)
    """
    lens = prepare_lens_from_mask(attention_mask)
    indices = torch.nonzero(attention_mask.flatten(), as_tuple=False).flatten()
    max_seqlen_in_batch = lens.max().item()
    cu_seqlens = prepare_cu_seqlens_from_mask(attention_mask)
    return indices, cu_seqlens, max_seqlen_in_batch


def unpad_input(
    q: torch.Tensor,
    states: Tuple[torch.Tensor],
    attention_mask: torch.Tensor,
    q_len: int,
    keepdim: bool = False,
):
    """Drop the padded tokens of a query tensor and of key/value-like ``states``.

    Args:
        q: ``[batch_size, q_len, ...]``; ``q_len`` equals the states' length (prefill) or 1 (decoding).
        states: tensors ``[batch_size, seq_len, ...]``.
        attention_mask: ``[batch_size, seq_len]``, 1 valid, 0 padding.
        q_len: the target length.
        keepdim: keep a leading batch axis of 1.

    Returns:
        ``(q, states, indices_q, (cu_seqlens_q, cu_seqlens_k), (max_seqlen_q, max_seqlen_k))``.

    Source: fla/layers/utils.py:L101-L173 (fla 0.4.0)
    """
    indices_k, cu_seqlens_k, max_seqlen_in_batch_k = get_unpad_data(attention_mask)
    batch_size, seq_len, *_ = states[0].shape

    state = tuple(index_first_axis(rearrange(s, "b s ... -> (b s) ..."), indices_k) for s in states)

    if q_len == seq_len:
        q = index_first_axis(rearrange(q, "b s ... -> (b s) ..."), indices_k)
        cu_seqlens_q = cu_seqlens_k
        max_seqlen_in_batch_q = max_seqlen_in_batch_k
        indices_q = indices_k
    elif q_len == 1:
        max_seqlen_in_batch_q = 1
        cu_seqlens_q = torch.arange(batch_size + 1, dtype=torch.int32, device=q.device)
        indices_q = cu_seqlens_q[:-1]
        q = q.squeeze(1)
    else:
        # fla raises here too: only prefill (q_len == seq_len) and decoding (q_len == 1) exist
        raise NotImplementedError("We only support either q_len == k_len (prefilling) or q_len == 1 (decoding)")

    if keepdim:
        q = q.unsqueeze(0)
        state = tuple(s.unsqueeze(0) for s in state)

    return (
        q,
        state,
        indices_q,
        (cu_seqlens_q, cu_seqlens_k),
        (max_seqlen_in_batch_q, max_seqlen_in_batch_k),
    )


def pad_input(
    hidden_states: torch.Tensor,
    indices: torch.LongTensor,
    batch_size: int,
    seq_len: int,
) -> torch.Tensor:
    """Scatter unpadded rows ``[total_tokens, ...]`` back to ``[batch_size, seq_len, ...]`` (zeros
    at the padded positions).

    Source: fla/layers/utils.py:L176-L197 (fla 0.4.0)
    """
    output = index_put_first_axis(hidden_states, indices, batch_size * seq_len)
    return rearrange(output, "(b s) ... -> b s ...", b=batch_size)
