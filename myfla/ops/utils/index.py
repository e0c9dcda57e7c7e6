"""Sequence-index helpers for variable-length batches (``cu_seqlens``), as ``fla.ops.utils.index``.

fla also ships a small Triton kernel that fills position ids (``prepare_position_ids_kernel``, which
0.4.0 itself never launches); its math is :func:`prepare_position_ids`. All helpers are plain tensor
code, cached on argument identity with ``tensor_cache`` exactly as fla.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from myfla.utils import tensor_cache


def _cdiv(x, y):
    """Ceiling division for ints or integer tensors (``triton.cdiv``)."""
    return (x + y - 1) // y


@tensor_cache
def prepare_lens(cu_seqlens: torch.LongTensor) -> torch.LongTensor:
    """Length of every sequence.

    Source: fla/ops/utils/index.py:L38-L40 (fla 0.4.0)
    """
    return cu_seqlens[1:] - cu_seqlens[:-1]


@tensor_cache
def prepare_lens_from_mask(mask: torch.BoolTensor) -> torch.LongTensor:
    """Number of valid tokens per row of a ``[B, T]`` padding mask (int32).

    Source: fla/ops/utils/index.py:L43-L45 (fla 0.4.0)
    """
    return mask.sum(dim=-1, dtype=torch.int32)


@tensor_cache
def prepare_cu_seqlens_from_lens(
    lens: torch.LongTensor,
    dtype: Optional[torch.dtype] = torch.int32
) -> torch.LongTensor:
    """``[0, l0, l0+l1, ...]`` from sequence lengths.

    Source: fla/ops/utils/index.py:L48-L53 (fla 0.4.0)
    """
    return F.pad(lens.cumsum(dim=0, dtype=dtype), (1, 0))


@tensor_cache
def prepare_cu_seqlens_from_mask(
    mask: torch.BoolTensor,
    dtype: Optional[torch.dtype] = torch.int32
) -> torch.LongTensor:
    """Cumulative sequence lengths of the rows of a ``[B, T]`` padding mask.

    Source: fla/ops/utils/index.py:L56-L61 (fla 0.4.0)
    """
    return prepare_cu_seqlens_from_lens(prepare_lens_from_mask(mask), dtype)


@tensor_cache
def prepare_lens_from_cu_seqlens(
    cu_seqlens: torch.LongTensor,
) -> torch.LongTensor:
    """Length of every sequence (the same as :func:`prepare_lens`).

    Source: fla/ops/utils/index.py:L64-L68 (fla 0.4.0)
    """
    return cu_seqlens[1:] - cu_seqlens[:-1]


@tensor_cache
def prepare_split_cu_seqlens(
    batch_size: int,
    seq_len: int,
    split_size: int,
    cu_seqlens: Optional[torch.LongTensor] = None,
    dtype: Optional[torch.dtype] = torch.int32,
    device: Optional[torch.device] = torch.device('cpu')
) -> torch.LongTensor:
    """Boundaries that cut every sequence (``cu_seqlens``, or ``batch_size`` sequences of
    ``seq_len``) into pieces of at most ``split_size`` tokens.

    Source: fla/ops/utils/index.py:L71-L93 (fla 0.4.0)
    """
    if cu_seqlens is None:
        total_tokens = batch_size * seq_len
        cu_seqlens = list(range(0, total_tokens, seq_len)) + [total_tokens]
    else:
        cu_seqlens = cu_seqlens.tolist()
    return torch.tensor(
        [
            i
            for bos, eos in zip(cu_seqlens[:-1], cu_seqlens[1:])
            for i in range(bos, eos, split_size)
        ] + [cu_seqlens[-1]],
        dtype=dtype,
        device=device
    )


@tensor_cache
def prepare_position_ids(cu_seqlens: torch.LongTensor) -> torch.LongTensor:
    """Position of every token inside its own sequence, ``[T]``.

    Source: fla/ops/utils/index.py:L96-L101 (fla 0.4.0)
    Source: fla/ops/utils/index.py:L14-L35 (fla 0.4.0)
    """
    total = int(cu_seqlens[-1].item()) if cu_seqlens.numel() > 0 else 0
    # position = global index - start of the token's sequence (one batched op, no per-sequence
    # arange). The token -> sequence map uses searchsorted (empty sequences included): on CPU,
    # repeat_interleave with a tensor of counts costs ~8 ms a call whatever the size.
    positions = torch.arange(total, dtype=cu_seqlens.dtype, device=cu_seqlens.device)
    seq = torch.searchsorted(cu_seqlens[1:], positions, right=True)
    return positions - cu_seqlens[:-1][seq]


@tensor_cache
def prepare_sequence_ids(cu_seqlens: torch.LongTensor) -> torch.LongTensor:
    """Index of the sequence every token belongs to, ``[T]``.

    Source: fla/ops/utils/index.py:L104-L106 (fla 0.4.0)
    """
    return prepare_position_ids(cu_seqlens).eq(0).cumsum(0) - 1


@tensor_cache
def prepare_token_indices(cu_seqlens: torch.LongTensor) -> torch.LongTensor:
    """``[T, 2]`` pairs (sequence index, position within the sequence) for every token.

    Source: fla/ops/utils/index.py:L109-L112 (fla 0.4.0)
    """
    position_ids = prepare_position_ids(cu_seqlens)
    return torch.stack([prepare_sequence_ids(cu_seqlens), position_ids], 1).to(cu_seqlens)


@tensor_cache
def prepare_chunk_indices(
    cu_seqlens: torch.LongTensor,
    chunk_size: int
) -> torch.LongTensor:
    """``[NT, 2]`` pairs (sequence index, chunk index within the sequence) for every chunk.

    Source: fla/ops/utils/index.py:L115-L121 (fla 0.4.0)
    """
    nchunks = _cdiv(prepare_lens(cu_seqlens), chunk_size).tolist()
    indices = torch.cat([torch.arange(n) for n in nchunks]) if nchunks else torch.zeros(0, dtype=torch.long)
    return torch.stack([indices.eq(0).cumsum(0) - 1, indices], 1).to(cu_seqlens)


@tensor_cache
def prepare_chunk_offsets(
    cu_seqlens: torch.LongTensor,
    chunk_size: int
) -> torch.LongTensor:
    """Index of every sequence's first chunk in the flat chunk list, plus the total, ``[N+1]``.

    Source: fla/ops/utils/index.py:L124-L129 (fla 0.4.0)
    """
    return torch.cat([cu_seqlens.new_tensor([0]), _cdiv(prepare_lens(cu_seqlens), chunk_size)]).cumsum(-1)


@tensor_cache
def get_max_num_splits(cu_seqlens: torch.LongTensor, chunk_size: int) -> int:
    """Chunks of ``chunk_size`` in the longest sequence.

    Source: fla/ops/utils/index.py:L132-L134 (fla 0.4.0)
    """
    return _cdiv(int(max(prepare_lens(cu_seqlens))), chunk_size)


def check_varlen_inputs(q: torch.Tensor, initial_state: Optional[torch.Tensor],
                        cu_seqlens: Optional[torch.LongTensor]) -> None:
    """Port-only: the varlen input checks fla repeats inline in chunk_kda, fused_recurrent_kda,
    chunk_gated_delta_rule and fused_recurrent_gated_delta_rule (same messages, same order)."""
    if cu_seqlens is None:
        return
    if q.shape[0] != 1:
        raise ValueError(
            f"The batch size is expected to be 1 rather than {q.shape[0]} when using `cu_seqlens`."
            f"Please flatten variable-length inputs before processing."
        )
    if initial_state is not None and initial_state.shape[0] != len(cu_seqlens) - 1:
        raise ValueError(
            f"The number of initial states is expected to be equal to the number of input sequences, "
            f"i.e., {len(cu_seqlens) - 1} rather than {initial_state.shape[0]}."
        )
