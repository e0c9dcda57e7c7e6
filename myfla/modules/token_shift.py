"""RWKV's token shift, as ``fla.modules.token_shift``: ``delta[t] = x[t-1] - x[t]`` within every
sequence, with ``x[-1]`` taken from a ``[N, D]`` cache (the last token of the previous call) or zero,
and the new cache ``x[last]``. Backward: ``dx[t] = dy[t+1] - dy[t]`` (plus the cache gradient at the
last token), and the first token's ``dy`` is the cache's gradient.

fla launches per-token ("short") or per-block ("long") kernels; both compute this formula, which is
a few whole-tensor ops here (varlen: one gather of the sequence boundaries).
"""

from __future__ import annotations

from typing import Optional

import torch

from myfla.utils import input_guard, is_amd, tensor_cache

# Warp counts of fla's autotuner (kept for API parity; unused by torch code).
# Source: fla/modules/token_shift.py:L12-L12 (fla 0.4.0)
NUM_WARPS_AUTOTUNE = [2, 4, 8, 16] if is_amd else [2, 4, 8, 16, 32]


def token_shift_ref(
    x: torch.Tensor,
    cu_seqlens: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """fla's torch reference (no cache).

    Source: fla/modules/token_shift.py:L15-L48 (fla 0.4.0)
    """
    if cu_seqlens is not None:
        # Variable length mode with cu_seqlens
        assert x.dim() == 3, "Input must be [B, T, D]"
        B, T, D = x.shape
        assert B == 1, "Batch size must be 1 when using cu_seqlens"

        result = torch.zeros_like(x)
        N = cu_seqlens.shape[0] - 1

        for i in range(N):
            start = cu_seqlens[i].item()
            end = cu_seqlens[i+1].item()
            seq_len = end - start

            if seq_len <= 1:
                # For sequences of length 1 or 0, delta is simply -x
                result[0, start:end] = -x[0, start:end]
            else:
                # For longer sequences, handle padding manually
                shifted = torch.zeros_like(x[0, start:end])
                shifted[1:] = x[0, start:end-1]
                delta = shifted - x[0, start:end]
                result[0, start:end] = delta

        return result
    else:
        time_shift = torch.nn.ZeroPad2d((0, 0, 1, -1))
        shifted = time_shift(x)
        delta = shifted - x
        return delta


@tensor_cache
def prepare_maxlens(cu_seqlens: torch.LongTensor) -> int:
    """Length of the longest sequence.

    Source: fla/modules/token_shift.py:L364-L366 (fla 0.4.0)
    """
    return torch.max(cu_seqlens[1:] - cu_seqlens[:-1]).item()


def _boundaries(cu_seqlens: torch.Tensor):
    """``(seq, first, last)``: indices of the non-empty sequences and their first/last tokens."""
    starts, ends = cu_seqlens[:-1].to(torch.long), cu_seqlens[1:].to(torch.long)
    seq = torch.nonzero(ends > starts).squeeze(-1)
    return seq, starts[seq], ends[seq] - 1


def token_shift_fwd(
    x: torch.Tensor,
    cu_seqlens: Optional[torch.Tensor] = None,
    cache: Optional[torch.Tensor] = None,
    output_cache: bool = False
) -> torch.Tensor:
    """``(y, N, T, use_short_kernel, cache_out)``: the shift ``y`` ``[B, T, D]``, the number of sequences,
    the (longest) sequence length, fla's kernel choice (kept for the backward's signature) and the
    new cache ``[N, D]`` (None unless ``output_cache``). A sequence's cache is its last token; an
    empty sequence keeps the cache it came with (zero without one).

    Source: fla/modules/token_shift.py:L369-L434 (fla 0.4.0)
    Source: fla/modules/token_shift.py:L51-L140 (fla 0.4.0)
    Source: fla/modules/token_shift.py:L143-L213 (fla 0.4.0)
    """
    B, T, D = x.shape
    y = torch.empty_like(x)
    use_short_kernel = T <= 4096
    if cu_seqlens is not None:
        T = prepare_maxlens(cu_seqlens)
        N = len(cu_seqlens) - 1
    else:
        N = B
    cache_out = None
    if cu_seqlens is None:
        if x.shape[1] > 0:
            torch.sub(x[:, :-1], x[:, 1:], out=y[:, 1:])
            if cache is not None:
                torch.sub(cache.view(B, D).to(x.dtype), x[:, 0], out=y[:, 0])
            else:
                torch.neg(x[:, 0], out=y[:, 0])
        if output_cache:
            cache_out = x[:, -1].clone() if x.shape[1] > 0 else _kept_cache(cache, N, D, x)
        return y, N, T, use_short_kernel, cache_out
    flat, yf = x[0], y[0]
    if flat.shape[0] > 0:
        torch.sub(flat[:-1], flat[1:], out=yf[1:])
    seq, first, last = _boundaries(cu_seqlens)
    head = -flat[first]
    if cache is not None:
        head = head + cache.view(N, D)[seq].to(x.dtype)
    yf[first] = head
    if output_cache:
        cache_out = _kept_cache(cache, N, D, x)
        cache_out[seq] = flat[last]
    return y, N, T, use_short_kernel, cache_out


def _kept_cache(cache: Optional[torch.Tensor], N: int, D: int, x: torch.Tensor) -> torch.Tensor:
    if cache is not None:
        return cache.view(N, D).to(x.dtype).clone()
    return x.new_zeros(N, D)


def token_shift_bwd(
    dy: torch.Tensor,
    N: int,
    T: int,
    dcache: Optional[torch.Tensor] = None,
    cu_seqlens: Optional[torch.Tensor] = None,
    use_short_kernel: bool = True,
    has_init_cache: bool = False
) -> torch.Tensor:
    """``(dx, grad_cache)``: ``dx[t] = dy[t+1] - dy[t]`` inside every sequence, plus ``dcache`` (the
    new cache's gradient) at its last token; ``grad_cache`` ``[N, D]`` is the first token's ``dy``
    (None unless ``has_init_cache``; an empty sequence's is its new cache's gradient, as its cache
    passes through).

    Source: fla/modules/token_shift.py:L437-L487 (fla 0.4.0)
    Source: fla/modules/token_shift.py:L216-L291 (fla 0.4.0)
    Source: fla/modules/token_shift.py:L294-L361 (fla 0.4.0)
    """
    B, L, D = dy.shape
    dx = torch.empty_like(dy)
    grad_cache_out = dy.new_zeros(N, D) if has_init_cache else None
    if cu_seqlens is None:
        if L > 0:
            torch.sub(dy[:, 1:], dy[:, :-1], out=dx[:, :-1])
            if dcache is not None:
                torch.sub(dcache.view(B, D).to(dy.dtype), dy[:, -1], out=dx[:, -1])
            else:
                torch.neg(dy[:, -1], out=dx[:, -1])
            if has_init_cache:
                grad_cache_out.copy_(dy[:, 0])
        return dx, grad_cache_out
    flat, dxf = dy[0], dx[0]
    if flat.shape[0] > 0:
        torch.sub(flat[1:], flat[:-1], out=dxf[:-1])
    seq, first, last = _boundaries(cu_seqlens)
    tail = -flat[last]
    if dcache is not None:
        tail = tail + dcache.view(N, D)[seq].to(dy.dtype)
    dxf[last] = tail
    if has_init_cache:
        if dcache is not None:
            # empty sequences pass their cache through to the new one (see token_shift_fwd)
            grad_cache_out.copy_(dcache.view(N, D))
        grad_cache_out[seq] = flat[first]
    return dx, grad_cache_out


class TokenShift(torch.autograd.Function):
    """Autograd function of ``token_shift``.

    Source: fla/modules/token_shift.py:L490-L509 (fla 0.4.0)
    """

    @staticmethod
    @input_guard
    def forward(ctx, x: torch.Tensor, cu_seqlens: Optional[torch.Tensor] = None,
                cache: Optional[torch.Tensor] = None, output_cache: bool = False):
        output, N, T, use_short_kernel, cache_out = token_shift_fwd(x, cu_seqlens, cache, output_cache)
        ctx.cu_seqlens = cu_seqlens
        ctx.N = N
        ctx.T = T
        ctx.use_short_kernel = use_short_kernel
        ctx.has_cache = cache is not None
        return output, cache_out

    @staticmethod
    @input_guard
    def backward(ctx, dy: torch.Tensor, dcache: Optional[torch.Tensor] = None):
        dx, grad_cache = token_shift_bwd(dy, ctx.N, ctx.T, dcache, ctx.cu_seqlens,
                                         ctx.use_short_kernel, ctx.has_cache)
        return dx, None, grad_cache, None


def token_shift(
    x: torch.Tensor,
    cu_seqlens: Optional[torch.LongTensor] = None,
    cache: Optional[torch.Tensor] = None,
    output_cache: bool = False
):
    """
    Token shift: ``delta[t] = x[t-1] - x[t]`` within every sequence.

    Args:
        x: Input tensor of shape [B, T, D] (or [1, T, D] when `cu_seqlens` is supplied).
        cu_seqlens: Optional cumulative sequence lengths of shape [B + 1].
                    When supplied, `x.shape[0]` must be 1 and `x.dim()` must be 3.
        cache: Optional cache tensor of shape [N, D] that holds the last token
               from the previous call.
        output_cache: Whether to return the updated cache alongside the output.
                      In previous versions this parameter did not exist and the
                      cache was always dropped; to preserve backward compatibility
                      the default is False.

    Returns:
        output: Tensor of shape [B, T, D] after applying the token-shift.

        cache_out: Tensor of shape [N, D] containing the last token that
                   should be fed as `cache` in the next call.  Only returned
                   when `output_cache=True`.

    Source: fla/modules/token_shift.py:L512-L547 (fla 0.4.0)
    """
    if cu_seqlens is not None:
        assert x.dim() == 3, "Input must be [B, T, D]"
        assert x.shape[0] == 1, "Batch size must be 1 when using cu_seqlens"

    output, cache_out = TokenShift.apply(x, cu_seqlens, cache, output_cache)
    if output_cache:
        return output, cache_out
    else:
        return output
