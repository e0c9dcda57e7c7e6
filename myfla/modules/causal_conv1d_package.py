"""The two functions of the compiled ``causal-conv1d`` package (Dao-AILab/causal-conv1d) that fla
0.4.0's ``backend='cuda'`` calls, re-expressed in torch (port-only module; fla imports the package).

``myfla.install_as_causal_conv1d()`` also serves them as ``import causal_conv1d`` (``myfla._causal_conv1d``):
clients such as transformers' Qwen3-Next and Kimi Linear then keep packed sequences apart (``seq_idx``).

With them, ``ShortConvolution(backend='cuda')`` keeps the semantics it has in fla with the package
installed, on every device: the prefill takes a ``[N, D, S]`` cache (``S >= W - 1``, the package's
``[N, D, W - 1]`` convention included) and returns a new ``[N, D, W]`` one whose column 0 is zero;
decoding shifts a ``[N, D, S]`` state in place (or writes a circular buffer, ``cache_seqlens``, and
picks state rows, ``conv_state_indices``, as the package does). The package's kernels accumulate in fp32; so does
this code (fp64 is refused, as the kernels refuse it). The package's own limits and messages are
kept: kernel width 2 to 4, channels divisible by 8 in the channel-last layout fla uses, ``seq_idx``
without initial or final states.

Semantics read from causal-conv1d 1.6.1 (causal_conv1d/causal_conv1d_interface.py, its torch
references ``causal_conv1d_ref`` / ``causal_conv1d_update_ref``, and csrc/causal_conv1d.cpp,
csrc/causal_conv1d_fwd.cu for the checks, the ``seq_idx`` masking and the final states).
"""

from __future__ import annotations

from typing import Optional

import torch

from myfla.utils import accumulation_dtype

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_kernel_dtypes(x: torch.Tensor, weight: torch.Tensor) -> None:
    """The kernels dispatch on fp32/fp16/bf16 inputs and weights only (csrc/causal_conv1d.cpp)."""
    if x.dtype not in _KERNEL_DTYPES:
        raise RuntimeError(
            "Expected input_type == at::ScalarType::Float || input_type == at::ScalarType::Half || "
            "input_type == at::ScalarType::BFloat16 to be true, but got false."
        )
    if weight.dtype not in _KERNEL_DTYPES:
        raise RuntimeError(
            "Expected weight_type == at::ScalarType::Float || weight_type == at::ScalarType::Half || "
            "weight_type == at::ScalarType::BFloat16 to be true, but got false."
        )


def _check_width(width: int) -> None:
    if not 2 <= width <= 4:
        raise RuntimeError("causal_conv1d only supports width between 2 and 4")


def _check_activation(activation: Optional[str]) -> None:
    if activation not in [None, "silu", "swish"]:
        raise NotImplementedError("activation must be None, silu, or swish")   # the package's own type and text


def _activate(y: torch.Tensor, activation: Optional[str]) -> torch.Tensor:
    return y * torch.sigmoid(y) if activation in ("silu", "swish") else y


def causal_conv1d_fn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    seq_idx: Optional[torch.Tensor] = None,
    initial_states: Optional[torch.Tensor] = None,
    return_final_states: bool = False,
    final_states_out: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
):
    """Depthwise causal conv of ``x`` ``[B, D, T]`` with ``weight`` ``[D, W]``:
    ``out[t] = act(bias + sum_w weight[:, w] * x[t - (W-1) + w])`` (differentiable in every tensor).

    ``initial_states`` ``[B, D, W-1]`` are the inputs before ``x``; ``return_final_states`` also
    returns the last ``W-1`` inputs of ``[initial_states, x]`` (zero-padded on the left), written into
    ``final_states_out`` when given. ``seq_idx`` ``[B, T]`` (int32) marks packed sequences: a window
    reads only tokens of its own sequence, and tokens with ``seq_idx < 0`` (padding) output 0.
    Returns ``out`` ``[B, D, T]`` (``x.dtype``), or ``(out, final_states)``.

    Source: causal_conv1d/causal_conv1d_interface.py:L9-L129 (causal-conv1d 1.6.1); the checks, the
    ``seq_idx`` masking and the final states of csrc/causal_conv1d.cpp and csrc/causal_conv1d_fwd.cu.
    """
    _check_activation(activation)
    if x.stride(2) != 1 and x.stride(1) != 1:
        x = x.contiguous()
    if seq_idx is not None:
        assert initial_states is None, "initial_states must be None if seq_idx is not None"
        assert not return_final_states, "If seq_idx is not None, we don't return final_states_out"
    if return_final_states:
        assert x.stride(1) == 1, "Only channel-last layout support returning final_states_out"

    B, D, T = x.shape
    W = weight.shape[-1]
    _check_kernel_dtypes(x, weight)
    channel_last = x.stride(1) == 1 and x.stride(2) > 1
    if channel_last:
        if D % 8 != 0:
            raise RuntimeError("causal_conv1d only supports channel dimension divisible by 8 for now")
        if x.stride(2) % 8 != 0 or x.stride(0) % 8 != 0:
            raise RuntimeError(
                "causal_conv1d with channel last layout requires strides (x.stride(0) and x.stride(2)) "
                "to be multiples of 8"
            )
    _check_width(W)
    if seq_idx is not None:
        if not channel_last:
            raise RuntimeError("seq_idx is only supported for channel last layout")
        if seq_idx.dtype != torch.int32:
            raise RuntimeError("Expected seq_idx.scalar_type() == torch::kInt32 to be true, but got false.")
        if tuple(seq_idx.shape) != (B, T):
            raise RuntimeError("seq_idx must have shape (batch_size, seqlen)")
    if initial_states is not None:
        if not channel_last:
            raise RuntimeError("initial_states is only supported for channel last layout")
        if initial_states.dtype != x.dtype:
            raise RuntimeError(
                "Expected initial_states.scalar_type() == input_type to be true, but got false."
            )
        if tuple(initial_states.shape) != (B, D, W - 1):
            raise RuntimeError("initial_states must have shape (batch_size, dim, width - 1)")

    acc = accumulation_dtype(x)
    b_w = weight.to(acc)
    # [B, D, W-1+T]: the W-1 inputs before the first token (initial states or zeros), then x
    before = initial_states.to(acc) if initial_states is not None else x.new_zeros(B, D, W - 1, dtype=acc)
    xp = torch.cat([before, x.to(acc)], -1)
    if seq_idx is not None:
        # a tap reads a token of the same sequence only; positions before the input count as -1
        sp = torch.cat([seq_idx.new_full((B, W - 1), -1), seq_idx], -1)
    y = torch.zeros(B, D, T, dtype=acc, device=x.device)
    for w in range(W):
        tap = xp[..., w:w + T]
        if seq_idx is not None:
            tap = tap * (sp[:, w:w + T] == seq_idx).unsqueeze(1)
        y = y + tap * b_w[:, w:w + 1]
    if bias is not None:
        y = y + bias.to(acc).unsqueeze(-1)
    y = _activate(y, activation)
    if seq_idx is not None:
        y = y * (seq_idx >= 0).unsqueeze(1)
    out = y.to(x.dtype)
    if not return_final_states:
        return out
    final_states = xp[..., xp.shape[-1] - (W - 1):].to(x.dtype)
    if final_states_out is not None:
        final_states_out.copy_(final_states)
        final_states = final_states_out
    return out, final_states


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
    cache_seqlens: Optional[torch.Tensor] = None,
    conv_state_indices: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Decoding step(s): ``x`` ``[B, D]`` or ``[B, D, L]`` enters ``conv_state`` ``[B, D, S]``
    (``S >= W - 1``), which is shifted left by ``L`` **in place**; each output convolves the last
    ``W`` inputs up to its token. Returns ``out`` shaped like ``x`` (``x.dtype``).

    ``cache_seqlens`` ``[B]`` (int32) makes each state row a circular buffer: the ``W-1`` inputs
    before ``x`` are read at ``(cache_seqlens - W + 1 + j) % S`` and ``x`` is written from
    ``cache_seqlens % S`` on (nothing shifts). ``conv_state_indices`` ``[B]`` (int32) picks the state
    row of each batch row from a larger ``conv_state`` ``[entries, D, S]`` (continuous batching); a
    negative index marks a padding row: its output is 0 and no state changes.

    Source: causal_conv1d/causal_conv1d_interface.py:L174-L202 (causal-conv1d 1.6.1); the state
    handling and the checks of csrc/causal_conv1d_update.cu and csrc/causal_conv1d.cpp.
    """
    _check_activation(activation)
    _check_kernel_dtypes(x, weight)
    if conv_state.dtype != x.dtype:
        raise RuntimeError("Expected conv_state.scalar_type() == input_type to be true, but got false.")
    unsqueeze = x.dim() == 2
    if unsqueeze:
        x = x.unsqueeze(-1)
    B, D, L = x.shape
    W, S = weight.shape[-1], conv_state.shape[-1]
    if S < W - 1:
        raise RuntimeError("Expected conv_state_len >= width - 1 to be true, but got false.")
    if tuple(weight.shape) != (D, W):
        raise RuntimeError("weight must have shape (dim, width)")
    _check_width(W)
    if conv_state_indices is not None:
        if conv_state_indices.dtype != torch.int32:
            raise RuntimeError(
                "Expected conv_state_indices.scalar_type() == torch::kInt32 to be true, but got false.")
        if tuple(conv_state_indices.shape) != (B,):
            raise RuntimeError("conv_state_indices must have shape (batch_size)")
        if conv_state.dim() != 3 or conv_state.shape[1] != D:
            raise RuntimeError("conv_state must have shape (conv_state_entries, dim, conv_state_len)")
    elif tuple(conv_state.shape) != (B, D, S):
        raise RuntimeError("conv_state must have shape (batch_size, dim, conv_state_len)")
    if cache_seqlens is not None:
        if cache_seqlens.dtype != torch.int32:
            raise RuntimeError("Expected cache_seqlens.scalar_type() == torch::kInt32 to be true, but got false.")
        if tuple(cache_seqlens.shape) != (B,):
            raise RuntimeError("cache_seqlens must have shape (batch_size)")

    if conv_state_indices is not None:
        rows = conv_state_indices.long()
        live = rows >= 0
        state = conv_state[rows.clamp(min=0)]                          # [B, D, S], a copy
    else:
        state = conv_state
    if cache_seqlens is None:
        before = state[..., S - (W - 1):]                              # the W-1 inputs before x
        new_state = torch.cat([state, x], -1)[..., -S:]
    else:
        start = cache_seqlens.long() % S                               # [B]: where x[0] is written
        offsets = torch.arange(-(W - 1), 0, device=x.device)
        read = (start[:, None] + offsets) % S                          # [B, W-1]
        before = state.gather(2, read[:, None, :].expand(B, D, W - 1))
        # only the last S tokens survive the circular writes (the kernel writes in order)
        kept = min(L, S)
        write = (start[:, None] + torch.arange(L - kept, L, device=x.device)) % S   # [B, kept], distinct
        new_state = state.clone().scatter_(2, write[:, None, :].expand(B, D, kept), x[..., L - kept:])

    acc = accumulation_dtype(x)
    window = torch.cat([before.to(acc), x.to(acc)], -1)                # [B, D, W-1+L]
    b_w = weight.to(acc)
    y = torch.zeros(B, D, L, dtype=acc, device=x.device)
    for w in range(W):
        y = y + window[..., w:w + L] * b_w[:, w:w + 1]
    if bias is not None:
        y = y + bias.to(acc).unsqueeze(-1)
    y = _activate(y, activation)
    if conv_state_indices is not None:
        y = y * live[:, None, None]
    out = y.to(x.dtype)
    with torch.no_grad():
        if conv_state_indices is None:
            conv_state.copy_(new_state)
        else:
            conv_state.index_copy_(0, rows[live], new_state[live].to(conv_state.dtype))
    return out.squeeze(-1) if unsqueeze else out
