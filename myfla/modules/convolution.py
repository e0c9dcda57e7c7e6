"""Depthwise causal 1-D convolution (the "short convolution" in front of q/k/v of KDA and GDN), and
fla's FFT long convolutions (``fft_conv``, ``LongConvolution``, ``ImplicitLongConvolution``).

fla implements it with four Triton kernels (forward, backward, final-state extraction, one-token
update). Here each kernel's math is batched torch code over all tokens of all sequences at once; the
only Python loop runs over the W (kernel width, typically 4) taps. Accumulation is fp32 as in the
kernels (fp64 for fp64 inputs, so fp64 gradcheck sees the exact math).

Conventions shared with fla 0.4.0:
- ``weight`` is ``[D, W]``; ``y[t] = act(sum_k x[t - (W-1) + k] * weight[:, k] + bias) + residual[t]``.
- The conv state / cache is ``[N, D, W]`` (full width W). Column ``c`` holds the input at token
  ``eos - W + c`` of its sequence, so column ``W-1`` is the newest token. A forward pass with an
  initial state reads columns ``1 .. W-1`` as the ``W-1`` tokens before the sequence; column 0 is
  never read (fla calls it padding) and its gradient is not propagated to the inputs.
- Varlen inputs are ``[1, T, D]`` with ``cu_seqlens``; nothing crosses a sequence boundary.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from myfla.modules import causal_conv1d_package
from myfla.ops.utils import prepare_sequence_ids
from myfla.ops.utils.calls import as_dtype
from myfla.ops.utils.threads import small_work_single_threaded
from myfla.ops.utils.validation import check_conv_inputs
from myfla.utils import accumulation_dtype, input_guard, is_amd

# Source: fla/modules/convolution.py:L18-L18 (fla 0.4.0)
NUM_WARPS_AUTOTUNE = [2, 4, 8, 16] if is_amd else [4, 8, 16, 32]
# Source: fla/modules/convolution.py:L19-L19 (fla 0.4.0)
STATIC_WARPS = 32 if not is_amd else 16

# fla binds these to the compiled `causal_conv1d` package when it is installed (else None, and
# backend='cuda' falls back to 'triton'). The port binds them to its torch re-expression of the
# package, so backend='cuda' has fla's semantics with the package installed (the package's
# [N, D, W-1] cache convention included) on every device.
# Source: fla/modules/convolution.py:L26-L26 (fla 0.4.0)
causal_conv1d_fn = causal_conv1d_package.causal_conv1d_fn
# Source: fla/modules/convolution.py:L27-L27 (fla 0.4.0)
causal_conv1d_update_cuda = causal_conv1d_package.causal_conv1d_update



def _silu_grad_factor(y: torch.Tensor) -> torch.Tensor:
    """d silu(y) / dy = sigmoid(y) * (1 + y * (1 - sigmoid(y)))."""
    s = torch.sigmoid(y)
    return s * (1 + y * (1 - s))


def _token_geometry(
    B: int,
    T: int,
    cu_seqlens: Optional[torch.Tensor],
    device: torch.device,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For the flattened token axis (``B*T`` tokens): sequence index and position within the
    sequence of every token, plus each sequence's start offset and length (all int64)."""
    tokens = torch.arange(B * T, device=device)
    if cu_seqlens is None:
        starts = torch.arange(B, device=device) * T
        lens = torch.full((B,), T, dtype=torch.long, device=device)
        return tokens // T, tokens % T, starts, lens
    offsets = cu_seqlens.to(device=device, dtype=torch.long)
    starts, lens = offsets[:-1], offsets[1:] - offsets[:-1]
    # a token's sequence is the number of sequence ends at or before it (empty sequences are
    # skipped); torch.repeat_interleave with a repeats tensor costs a fixed ~11 ms per call on CPU
    # in torch 2.13, more than the whole convolution of a short batch
    seq = torch.searchsorted(offsets[1:], tokens, right=True)
    pos = tokens - starts[seq]
    return seq, pos, starts, lens


def _head_taps(
    x: torch.Tensor,
    seq: torch.Tensor,
    pos: torch.Tensor,
    initial_state: Optional[torch.Tensor],
    W: int,
    head: torch.Tensor,
) -> List[torch.Tensor]:
    """Exact conv inputs of the ``head`` tokens (flat indices of tokens with ``pos < W-1``, the only
    ones whose window reaches before their sequence): ``taps[j]`` (``[M, D]`` in ``x.dtype``) is ``x[t-j]``
    inside the sequence, else the initial state's column ``W - j + pos`` (or 0 without one)."""
    h_seq, h_pos = seq[head], pos[head]
    taps = [x[head]]
    for j in range(1, W):
        inside = (h_pos >= j).unsqueeze(-1)
        if initial_state is not None:
            col = (W - j + h_pos).clamp(max=W - 1)
            before = initial_state[h_seq, :, col].to(x.dtype)
        else:
            before = x.new_zeros(())
        taps.append(torch.where(inside, x[(head - j).clamp(min=0)], before))
    return taps


def _flat_taps(x: torch.Tensor, W: int) -> List[torch.Tensor]:
    """``taps[j][t] = x[t-j]`` over the flat token axis (zeros before token 0), as views of one
    padded copy; they are exact except at head tokens, where a window crosses a sequence start."""
    xp = torch.cat([x.new_zeros(W - 1, x.shape[1]), x], 0)
    L = x.shape[0]
    return [xp[W - 1 - j:W - 1 - j + L] for j in range(W)]


def causal_conv1d_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    activation: Optional[str] = None,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Causal depthwise conv forward; returns ``(y, final_state)`` (``final_state`` ``[N, D, W]`` or None).

    Source: fla/modules/convolution.py:L403-L451 (fla 0.4.0)
    Source: fla/modules/convolution.py:L30-L135 (fla 0.4.0)
    """
    shape = x.shape
    if x.shape[-1] != weight.shape[0]:
        x = rearrange(x, 'b t ... -> b t (...)')
    B, T, D, W = *x.shape, weight.shape[1]
    seq, pos, _, _ = _token_geometry(B, T, cu_seqlens, x.device)
    acc = accumulation_dtype(x)
    b_x = x.reshape(B * T, D).to(acc)
    b_w = weight.to(acc)

    # tap j (the input j tokens back) meets weight column W-1-j; the flat shifted views are right
    # everywhere but at the first W-1 tokens of each sequence, which are recomputed exactly
    b_y = torch.zeros_like(b_x)
    for j, tap in enumerate(_flat_taps(b_x, W)):
        b_y.addcmul_(tap, b_w[:, W - 1 - j])
    head = torch.nonzero(pos < W - 1).flatten()
    head_taps = _head_taps(b_x, seq, pos, initial_state, W, head)
    b_y[head] = sum(tap * b_w[:, W - 1 - j] for j, tap in enumerate(head_taps))
    if bias is not None:
        b_y = b_y + bias.to(acc)
    if activation in ('swish', 'silu'):
        b_y = b_y * torch.sigmoid(b_y)
    if residual is not None:
        b_y = b_y + residual.reshape(B * T, D)
    y = b_y.to(x.dtype).view(B, T, D)

    final_state = None
    if output_final_state:
        final_state = causal_conv1d_update_states(
            x=x,
            state_len=W,
            initial_state=initial_state,
            cu_seqlens=cu_seqlens,
        )
    return y.view(shape), final_state


def causal_conv1d_bwd(
    x: torch.Tensor,
    dy: torch.Tensor,
    dht: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
    initial_state: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
    cu_seqlens: Optional[torch.Tensor] = None,
):
    """Gradients of :func:`causal_conv1d_fwd`: ``(dx, dw, db, dresidual, dh0)``.

    ``dht`` is the gradient of the returned final state (or None); ``dh0`` that of the initial
    state (None without one).

    Source: fla/modules/convolution.py:L454-L524 (fla 0.4.0)
    Source: fla/modules/convolution.py:L138-L333 (fla 0.4.0)
    """
    shape = x.shape
    if x.shape[-1] != weight.shape[0]:
        x = rearrange(x, 'b t ... -> b t (...)')
    B, T, D = x.shape
    W = weight.shape[1] if weight is not None else None
    L = B * T
    seq, pos, _, lens = _token_geometry(B, T, cu_seqlens, x.device)
    seq_len = lens[seq]

    # gradient at the pre-activation output; the pre-activation is recomputed as fla does
    acc = accumulation_dtype(x)
    b_dy = dy.reshape(L, D).to(acc)
    if activation is not None:
        y, _ = causal_conv1d_fwd(
            x=x,
            weight=weight,
            bias=bias,
            residual=None,
            initial_state=initial_state,
            activation=None,
            cu_seqlens=cu_seqlens,
            output_final_state=False
        )
        if activation in ('swish', 'silu'):
            b_dy = b_dy * _silu_grad_factor(y.reshape(L, D).to(acc))

    b_w = weight.to(acc)
    b_x = x.reshape(L, D).to(acc)
    head = torch.nonzero(pos < W - 1).flatten()
    flat_taps = _flat_taps(b_x, W)
    head_taps = _head_taps(b_x, seq, pos, initial_state, W, head)
    h_dy = b_dy[head]
    # dw column W-1-j: sum_t dy[t] * tap_j[t]; the flat views' head rows are swapped for exact ones
    dw = torch.stack([
        (b_dy * flat_taps[j]).sum(0) + (h_dy * (head_taps[j] - flat_taps[j][head])).sum(0)
        for j in range(W)
    ][::-1], -1).to(weight)
    db = b_dy.sum(0).to(bias) if bias is not None else None
    dr = dy if residual is not None else None

    # x[u] feeds y[u + j] through weight column W-1-j while u + j stays in the sequence; flat views
    # of dy shifted up are right except for the last W-1 tokens of a sequence (recomputed exactly)
    dyp = torch.cat([b_dy, b_dy.new_zeros(W - 1, D)], 0)
    b_dx = torch.zeros_like(b_dy)
    for j in range(W):
        b_dx.addcmul_(dyp[j:j + L], b_w[:, W - 1 - j])
    tail = torch.nonzero(pos + W - 1 >= seq_len).flatten()
    t_room = (seq_len - pos)[tail]                     # tokens left in the sequence, >= 1
    b_dx[tail] = sum(
        torch.where((t_room > j).unsqueeze(-1), b_dy[(tail + j).clamp(max=L - 1)], 0.) * b_w[:, W - 1 - j]
        for j in range(W)
    )

    dh0 = None
    if initial_state is not None:
        N = initial_state.shape[0]
        # [N, W, D] so that (sequence, column) index pairs address rows of D values
        b_dh0 = b_dy.new_zeros(N, W, D)
        h_seq, h_pos = seq[head], pos[head]
        for j in range(1, W):
            # token t (pos < j) read initial-state column W-j+pos through tap j
            m = h_pos < j
            b_dh0.index_put_((h_seq[m], W - j + h_pos[m]), h_dy[m] * b_w[:, W - 1 - j], accumulate=True)
        if dht is not None:
            # Deviation: a sequence shorter than W keeps initial-state column c in final-state
            # column c - len; that slot's gradient flows back to the initial state (fla 0.4.0
            # drops it; fixed in later fla, fla/modules/causal_conv1d/ops.py::compute_dh0_kernel).
            b_dht = dht.to(acc).transpose(1, 2)
            cols = torch.arange(1, W, device=x.device)
            src = cols.unsqueeze(0) - lens.unsqueeze(1)                       # [N, W-1]
            kept = (src >= 0).unsqueeze(-1)
            moved = b_dht.gather(1, src.clamp(min=0).unsqueeze(-1).expand(-1, -1, D))
            b_dh0[:, 1:] += torch.where(kept, moved, 0.)
        dh0 = b_dh0.transpose(1, 2).to(initial_state)

    if dht is not None:
        # final-state column c holds token eos-W+c; column 0 is padding in fla and gets no gradient.
        # Deviation: the column of token t is t + W - len (fla 0.4.0 used 1 + t for sequences shorter
        # than W-1, reading the wrong slot; fixed in later fla, causal_conv1d/ops.py bwd kernel).
        col = (pos + W - seq_len)[tail]
        b_dx[tail] += torch.where((col >= 1).unsqueeze(-1), dht[seq[tail], :, col.clamp(min=0)].to(acc), 0.)

    dx = b_dx.to(x.dtype)
    return dx.view(shape), dw, db, dr, dh0


@input_guard
def causal_conv1d_update_states(
    x: torch.Tensor,
    state_len: int,
    initial_state: Optional[torch.Tensor] = None,
    cu_seqlens: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The conv state after each sequence: ``[N, D, state_len]`` in ``x.dtype``, column ``c`` =
    input at token ``eos - state_len + c``, taken from the initial state (shifted by the sequence
    length) where the sequence is shorter, else zero.

    Source: fla/modules/convolution.py:L570-L595 (fla 0.4.0)
    Source: fla/modules/convolution.py:L527-L567 (fla 0.4.0)
    """
    B, T, D, W = *x.shape, state_len
    _, _, starts, lens = _token_geometry(B, T, cu_seqlens, x.device)
    x_flat = x.reshape(B * T, D)
    cols = torch.arange(W, device=x.device)
    token = (starts + lens).unsqueeze(1) - W + cols                        # [N, W]
    from_x = (token >= starts.unsqueeze(1)).unsqueeze(1)                   # [N, 1, W]
    if B * T > 0:
        values = x_flat[token.clamp(min=0)].transpose(1, 2)                # [N, D, W]
    else:
        # no tokens at all (T = 0): every column comes from the initial state or is zero
        values = x.new_zeros(len(lens), D, W)
    if initial_state is not None:
        src = cols + lens.unsqueeze(1)                                     # [N, W]
        kept = (src < W).unsqueeze(1)
        old = initial_state.gather(2, src.clamp(max=W - 1).unsqueeze(1).expand(-1, D, -1))
        before = torch.where(kept, old.to(x.dtype), 0)
    else:
        before = x.new_zeros(())
    # a fresh contiguous [N, D, W] buffer: decoding later updates it in place
    return torch.where(from_x, values, before).to(x.dtype).contiguous()


@input_guard
def causal_conv1d_update(
    x: torch.Tensor,
    cache: torch.Tensor,
    residual: Optional[torch.Tensor] = None,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    activation: Optional[str] = None
) -> torch.Tensor:
    """One decoding step per sequence: shift ``cache`` left by one, append ``x``, convolve.
    ``cache`` (``[N, D, W]``) is updated in place; without a cache the window is all zeros.

    Source: fla/modules/convolution.py:L598-L633 (fla 0.4.0)
    Source: fla/modules/convolution.py:L336-L400 (fla 0.4.0)
    """
    shape = x.shape
    if weight is not None and x.shape[-1] != weight.shape[0]:
        x = rearrange(x, 'b t ... -> b t (...)')
    *_, D = x.shape
    N = x.numel() // D
    W = weight.shape[1] if weight is not None else cache.shape[-1]

    acc = accumulation_dtype(x)
    # a step is a handful of small ops, so its cost is their number: b_y is fresh after the first
    # reduction and the rest works on it in place; no conversion op where dtypes already agree
    with small_work_single_threaded(N * D * W, x.device, 'causal_conv1d step'):
        b_x = as_dtype(x.reshape(N, D), acc)
        if cache is not None:
            # [N, D, W]: drop the oldest column, the new token becomes the last one
            b_cache = torch.cat([as_dtype(cache.narrow(-1, 1, cache.shape[-1] - 1), acc), b_x.unsqueeze(-1)], -1)
        else:
            b_cache = b_x.new_zeros(N, D, W)
        if weight is not None:
            b_y = (b_cache * as_dtype(weight, acc)).sum(-1)
        else:
            b_y = b_cache.sum(-1)
        if bias is not None:
            b_y.add_(as_dtype(bias, acc))
        if activation in ('swish', 'silu'):
            b_y.mul_(torch.sigmoid(b_y))
        if residual is not None:
            b_y.add_(residual.reshape(N, D))
        y = as_dtype(b_y, x.dtype)

        if cache is not None:
            cache.copy_(b_cache)
    return y.view(shape), cache


class CausalConv1dFunction(torch.autograd.Function):
    """Autograd wrapper of :func:`causal_conv1d_fwd` / :func:`causal_conv1d_bwd`.

    Source: fla/modules/convolution.py:L636-L681 (fla 0.4.0)
    """

    @staticmethod
    @input_guard
    def forward(
        ctx,
        x: torch.Tensor,
        weight: Optional[torch.Tensor] = None,
        bias: Optional[torch.Tensor] = None,
        residual: Optional[torch.Tensor] = None,
        initial_state: Optional[torch.Tensor] = None,
        output_final_state: Optional[bool] = False,
        activation: Optional[str] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
    ):
        ctx.activation = activation
        ctx.cu_seqlens = cu_seqlens
        ctx.save_for_backward(x, weight, bias, residual, initial_state)
        y, final_state = causal_conv1d_fwd(
            x=x,
            weight=weight,
            bias=bias,
            residual=residual,
            initial_state=initial_state,
            output_final_state=output_final_state,
            activation=activation,
            cu_seqlens=cu_seqlens,
        )
        return y, final_state

    @staticmethod
    @input_guard
    def backward(ctx, dy: torch.Tensor, dht: Optional[torch.Tensor] = None):
        x, weight, bias, residual, initial_state = ctx.saved_tensors
        dx, dw, db, dr, dh0 = causal_conv1d_bwd(
            x=x,
            dy=dy,
            dht=dht,
            weight=weight,
            bias=bias,
            residual=residual,
            initial_state=initial_state,
            activation=ctx.activation,
            cu_seqlens=ctx.cu_seqlens,
        )
        return dx, dw, db, dr, dh0, None, None, None


@input_guard
def causal_conv1d(
    x: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
    initial_state: Optional[torch.Tensor] = None,
    output_final_state: Optional[bool] = False,
    activation: Optional[str] = None,
    backend: Optional[str] = 'triton',
    cu_seqlens: Optional[torch.Tensor] = None,
    **kwargs,
):
    """Causal depthwise 1-D convolution (Mamba/Mamba2/DeltaNet short conv; with ``residual`` it is
    the "Canon" operation).

    Args:
        x: ``[B, T, D]`` (varlen: ``B == 1`` with ``cu_seqlens``).
        weight: ``[D, W]``. bias: ``[D]`` or None. residual: ``[B, T, D]`` or None, added after the
            activation.
        initial_state: ``[N, D, W]`` conv state to continue from, or None.
        output_final_state: also return the ``[N, D, W]`` state after the sequence.
        activation: ``'swish'``/``'silu'`` or None.
        backend: ``'triton'`` (the torch implementation above) or ``'cuda'`` (fla's path through the
            ``causal_conv1d`` package, here its torch re-expression: ``initial_state`` may be
            ``[N, D, S]`` with ``S >= W - 1``, of which the last ``W - 1`` columns are read; the final
            state is a new ``[N, D, W]`` tensor with column 0 zero; without ``output_final_state``
            the given ``initial_state`` is returned as it is).
        cu_seqlens: cumulative sequence lengths ``[N + 1]`` for varlen inputs.

    Returns:
        ``(y, final_state)``; ``final_state`` is None unless ``output_final_state``.

    Source: fla/modules/convolution.py:L684-L791 (fla 0.4.0)
    """
    if backend == 'triton':
        y, final_state = CausalConv1dFunction.apply(
            x,
            weight,
            bias,
            residual,
            initial_state,
            output_final_state,
            activation,
            cu_seqlens,
        )
        return y, final_state

    B, _, D, W = *x.shape, weight.shape[-1]
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    x = rearrange(x, 'b t d -> b d t')
    # token -> sequence ids for packed inputs (`seq_idx` in kwargs is fla's backward-compatible alias)
    seq_idx = kwargs.get('seq_idx', None)
    if cu_seqlens is not None and seq_idx is None:
        seq_idx = prepare_sequence_ids(cu_seqlens).to(torch.int32).unsqueeze(0)

    cache, initial_state = initial_state, None
    if cache is not None:
        # the package reads [N, D, W-1] initial states in the channel-last layout
        initial_state = cache[:, :, -(W - 1):].transpose(1, 2).contiguous().transpose(1, 2)

    result = causal_conv1d_fn(
        x=x,
        weight=weight,
        bias=bias,
        activation=activation,
        seq_idx=seq_idx,
        initial_states=initial_state,
        return_final_states=output_final_state,
    )
    y, final_state = result if output_final_state else (result, None)
    y = rearrange(y, 'b d t -> b t d')
    if output_final_state:
        cache = x.new_zeros(N, D, W)
        cache[:, :, -W + 1:].copy_(final_state[:, :, -W + 1:])
    if residual is not None:
        y.add_(residual)
    return y, cache


class ShortConvolution(nn.Conv1d):
    """Depthwise causal short convolution with optional SiLU, residual, varlen and a decoding cache.

    Args:
        hidden_size: number of channels D.
        kernel_size: kernel width W.
        bias: learnable bias. activation: ``'silu'``/``'swish'`` or None.
        backend: ``'triton'`` or ``'cuda'`` (``FLA_CONV_BACKEND`` overrides). ``'cuda'`` is fla's path
            through the ``causal_conv1d`` package, which the port re-expresses in torch
            (``causal_conv1d_package``): it takes the package's ``[N, D, W-1]`` caches as well as
            ``[N, D, W]`` ones, and keeps the package's limits (width 2-4, D divisible by 8).
        device, dtype: parameter factory arguments. ``use_fast_conv1d`` is deprecated (warns).

    Source: fla/modules/convolution.py:L794-L1009 (fla 0.4.0)
    """

    def __init__(
        self,
        hidden_size: int,
        kernel_size: int,
        bias: bool = False,
        activation: Optional[str] = 'silu',
        backend: Optional[str] = 'triton',
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        **kwargs,
    ):
        super().__init__(
            in_channels=hidden_size,
            out_channels=hidden_size,
            kernel_size=kernel_size,
            groups=hidden_size,
            bias=bias,
            padding=kernel_size - 1,
            device=device,
            dtype=dtype,
        )

        self.hidden_size = hidden_size
        self.activation = None
        if activation is not None:
            assert activation in ['silu', 'swish'], f"Activation `{activation}` not supported yet."
            self.activation = activation

        if 'use_fast_conv1d' in kwargs:
            warnings.warn(
                "The `use_fast_conv1d` parameter is deprecated and will be ignored. "
                "Please use the `backend` parameter instead."
            )
        self.backend = os.environ.get('FLA_CONV_BACKEND', backend)
        if backend not in ['cuda', 'triton']:
            raise ValueError(f"Invalid backend: {backend}, must be one of ['cuda', 'triton']")
        if backend == 'cuda' and causal_conv1d_fn is None:
            warnings.warn(
                "The `backend` parameter is set to `cuda`, but `causal_conv1d_fn` is not available. "
                "Switching to the Triton implementation instead. "
                "Consider installing `causal_conv1d` to enable the CUDA backend."
            )
            self.backend = 'triton'

    def extra_repr(self):
        parts = ['{in_channels}, {out_channels}, kernel_size={kernel_size}, stride={stride}']
        if self.padding != (0,) * len(self.padding):
            parts.append('padding={padding}')
        if self.dilation != (1,) * len(self.dilation):
            parts.append('dilation={dilation}')
        if self.output_padding != (0,) * len(self.output_padding):
            parts.append('output_padding={output_padding}')
        if self.groups != 1:
            parts.append('groups={groups}')
        if self.bias is None:
            parts.append('bias=False')
        if self.padding_mode != 'zeros':
            parts.append('padding_mode={padding_mode}')
        if self.activation is not None:
            parts.append('activation={activation}')
        parts.append(f'backend={self.backend}')
        return ', '.join(parts).format(**self.__dict__)

    def forward(
        self,
        x: torch.Tensor,
        residual: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
        cache: Optional[torch.Tensor] = None,
        output_final_state: bool = False,
        cu_seqlens: Optional[torch.LongTensor] = None,
        **kwargs,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x: ``[B, T, D]``.
            residual: ``[B, T, D]`` or None.
            mask: ``[B, T]`` padding mask; padded positions of ``x`` are zeroed **in place**.
            cache: ``[N, D, W]`` conv state; when decoding (one token per sequence) it is updated
                **in place**.
            output_final_state: also return the ``[N, D, W]`` state.
            cu_seqlens: ``[N + 1]`` cumulative lengths for varlen inputs.

        Returns:
            ``(y [B, T, D], cache or final state or None)``.
        """
        B, T, *_ = x.shape
        N = B if cu_seqlens is None else len(cu_seqlens) - 1
        if mask is not None:
            if cu_seqlens is not None:
                raise ValueError("`mask` and `cu_seqlens` cannot be provided at the same time")
            x = x.mul_(mask.unsqueeze(-1))
        check_conv_inputs(x, cu_seqlens)

        # one token per sequence: decoding, the cache (if any) is updated in place
        if B * T == N:
            return self.step(
                x=x,
                residual=residual,
                cache=cache,
                output_final_state=output_final_state,
                cu_seqlens=cu_seqlens
            )

        # fla's CUDA-extension path cannot take cu_seqlens together with a cache or a final state
        if self.backend == 'cuda' and cu_seqlens is not None and (cache is not None or output_final_state):
            warnings.warn(
                "The CUDA backend does not support both `cu_seqlens` and `cache` being provided, "
                "or both `cu_seqlens` and `output_final_state` being provided. "
                "Switching to the Triton backend instead. ",
                stacklevel=2
            )
            self.backend = 'triton'

        return causal_conv1d(
            x=x,
            weight=rearrange(self.weight, "d 1 w -> d w"),
            bias=self.bias,
            residual=residual,
            initial_state=cache,
            output_final_state=output_final_state,
            activation=self.activation,
            backend=self.backend,
            cu_seqlens=cu_seqlens,
            **kwargs
        )

    def step(
        self,
        x: torch.Tensor,
        residual: torch.Tensor,
        cache: torch.Tensor,
        output_final_state: bool = False,
        cu_seqlens: Optional[torch.LongTensor] = None
    ):
        """One decoding step for ``x`` of one token per sequence; returns ``(y, cache)``."""
        B, _, D, W = *x.shape, self.kernel_size[0]
        N = B if cu_seqlens is None else len(cu_seqlens) - 1
        if output_final_state and cache is None:
            cache = x.new_zeros(N, D, W)
        if cache is None:
            # Deviation: fla 0.4.0's update kernel ignores x when there is no cache (the window is
            # all zeros, so y = act(bias)); later fla always steps through a zero cache. Do that,
            # and still return None as 0.4.0 does when no state was asked for.
            y, _ = causal_conv1d_update(
                x=x,
                cache=x.new_zeros(N, D, W),
                residual=residual,
                weight=self.weight.squeeze(1),                  # [D, 1, W] -> [D, W]
                bias=self.bias,
                activation=self.activation,
            )
            return y, None
        # both backends update the cache in place (fla's "fast mode")
        if self.backend == 'triton':
            return causal_conv1d_update(
                x=x,
                cache=cache,
                residual=residual,
                weight=self.weight.squeeze(1),                  # [D, 1, W] -> [D, W]
                bias=self.bias,
                activation=self.activation,
            )

        shape = x.shape
        # [N, D]: fla squeezes the unit axis (T = 1, or B = 1 with cu_seqlens); reshaping is the same
        # for those and also holds for an empty batch (B = 0, where no axis has size 1)
        x = x.reshape(N, D)
        # the package's update: `cache` [N, D, S] (S >= W-1) shifts left by one, x enters last
        y = causal_conv1d_update_cuda(
            x=x,
            conv_state=cache,
            weight=self.weight.squeeze(1),                  # [D, 1, W] -> [D, W]
            bias=self.bias,
            activation=self.activation,
        )
        y = y.view(shape)
        if residual is not None:
            y.add_(residual)
        return y, cache

    @property
    def state_size(self) -> int:
        # Deviation: fla 0.4.0 multiplies by the tuple `kernel_size` (a repeated tuple, not an int);
        # later fla uses kernel_size[0].
        return self.hidden_size * self.kernel_size[0]


def fft_conv(u, k, dropout_mask, gelu=True, k_rev=None):
    """Long convolution by FFT: ``y = causal_conv(u, k) (+ anticausal_conv(u, k_rev)) + u``, then an
    optional GeLU and a per-(batch, channel) dropout mask. ``u`` is ``[B, H, L]`` (or ``[B, *, H, L]``),
    ``k`` ``[H, L]``; the FFT runs in ``k``'s dtype over ``2 L`` points, so the circular convolution
    equals the linear one on the first ``L`` outputs.

    Source: fla/modules/convolution.py:L1012-L1031 (fla 0.4.0)
    """
    seqlen = u.shape[-1]
    fft_size = 2 * seqlen
    k_f = torch.fft.rfft(k, n=fft_size) / fft_size
    if k_rev is not None:
        k_rev_f = torch.fft.rfft(k_rev, n=fft_size) / fft_size
        k_f = k_f + k_rev_f.conj()
    u_f = torch.fft.rfft(u.to(dtype=k.dtype), n=fft_size)

    if len(u.shape) > 3:
        k_f = k_f.unsqueeze(1)
    y = torch.fft.irfft(u_f * k_f, n=fft_size, norm="forward")[..., :seqlen]

    out = y + u
    if gelu:
        out = F.gelu(out)
    if dropout_mask is not None:
        return (out * rearrange(dropout_mask, "b H -> b H 1")).to(dtype=u.dtype)
    else:
        return out.to(dtype=u.dtype)


class LongConvolution(nn.Module):
    """
    LongConvolution applies a convolution operation on the input tensor using a fixed
    filter of length max_len.
    The filter is learned during training and is applied using FFT convolution.

    Args:
        hidden_size (int): The number of expected features in the input and output.
        max_len (int): The maximum sequence length.

    Returns:
        y: [batch_size, seq_len, hidden_size] tensor

    Source: fla/modules/convolution.py:L1034-L1075 (fla 0.4.0)
    """

    def __init__(
        self,
        hidden_size: int,
        max_len: int,
        **kwargs,
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.filter = nn.Parameter(torch.randn(self.hidden_size, max_len), requires_grad=True)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        """``x``: ``[batch_size, seq_len, hidden_size]`` -> the same shape."""
        x = x.transpose(1, 2)
        y = fft_conv(x, self.filter, dropout_mask=None, gelu=False)
        y = y.transpose(1, 2)
        return y.to(dtype=x.dtype)


class PositionalEmbedding(nn.Module):
    """Complex exponential positional embeddings for implicit long convolution filters:
    ``z[0, t] = [t / (L-1), cos(f_j w_t)..., -sin(f_j w_t)...]`` with ``w_t = 2 pi t / L`` and
    ``(emb_dim - 1) // 2`` frequencies ``f_j`` from 1e-4 to ``bands - 1``, stored as the frozen
    parameter ``z`` ``[1, seq_len, emb_dim]``.

    Source: fla/modules/convolution.py:L1078-L1099 (fla 0.4.0)
    """

    def __init__(self, emb_dim: int, seq_len: int, **kwargs):
        super().__init__()

        self.seq_len = seq_len
        # the time channel is normalised to [0, 1]
        t = torch.linspace(0, 1, self.seq_len)[None, :, None]  # 1, L, 1

        # (as fla 0.4.0: emb_dim <= 1 leaves `bands` unbound and fails below)
        if emb_dim > 1:
            bands = (emb_dim - 1) // 2
        # the frequencies use the unnormalised positions 0 .. L-1
        t_rescaled = torch.linspace(0, seq_len - 1, seq_len)[None, :, None]
        w = 2 * math.pi * t_rescaled / seq_len  # 1, L, 1

        f = torch.linspace(1e-4, bands - 1, bands)[None, None]
        z = torch.exp(-1j * f * w)
        z = torch.cat([t, z.real, z.imag], dim=-1)
        self.z = nn.Parameter(z, requires_grad=False)

    def forward(self, L):
        return self.z[:, :L]


class ImplicitLongConvolution(nn.Module):
    """
    Long convolution with implicit filter parameterized by an MLP.

    Args:
        hidden_size (int):
            The number of expected features in the input and output.
        max_len (int):
            The maximum sequence length.
        d_emb (Optional[int]):
            The dimension of the positional embeddings. Must be odd and greater or equal to 3 (time, sine and cosine).
            Defaults to 3.
        d_hidden (Optional[int]):
            The number of features in the hidden layer of the MLP. Defaults to 16.

    Attributes:
        pos_emb (`PositionalEmbedding`): The positional embedding layer.
        mlp (`nn.Sequential`): The MLP that parameterizes the implicit filter.

    Source: fla/modules/convolution.py:L1102-L1168 (fla 0.4.0)
    """

    def __init__(
        self,
        hidden_size: int,
        max_len: int,
        d_emb: int = 3,
        d_hidden: int = 16,
        **kwargs,
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.d_emb = d_emb

        assert (
            d_emb % 2 != 0 and d_emb >= 3
        ), "d_emb must be odd and greater or equal to 3 (time, sine and cosine)"
        self.pos_emb = PositionalEmbedding(d_emb, max_len)

        # the MLP maps each position's embedding to one filter tap per channel
        self.mlp = nn.Sequential(
            nn.Linear(d_emb, d_hidden),
            torch.nn.ReLU(),
            nn.Linear(d_hidden, hidden_size),
        )

    def filter(self, seq_len: int, *args, **kwargs):
        return self.mlp(self.pos_emb(seq_len)).transpose(1, 2)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        """``x``: ``[batch_size, seq_len, hidden_size]`` -> the same shape."""
        x = x.transpose(1, 2)
        k = self.filter(x.shape[-1])
        y = fft_conv(x, k, dropout_mask=None, gelu=False)

        y = y.transpose(1, 2)
        return y.to(dtype=x.dtype)
